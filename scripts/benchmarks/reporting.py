"""Figures every benchmark suite reports: mean and sample SD, saved plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scripts.benchmarks.core import MeanSD


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of finite values."""
    arr = np.asarray([v for v in values if v == v], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def mean_sd(values: Sequence[float]) -> MeanSD:
    """:func:`mean_std` as a table cell (``mean ± sd``, three decimals)."""
    return MeanSD(*mean_std(values))


def save_figure(fig: Figure, out_dir: Path, name: str) -> str:
    """Save a figure as ``out_dir/name`` (PNG) and return the file name."""
    fig.savefig(out_dir / name, dpi=110)
    return name
