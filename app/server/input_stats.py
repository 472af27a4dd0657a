"""Standardise a model's computed input features across the federation.

For a network with descriptor layers (``shape``, :mod:`models.shape`) the server
asks every connected hospital, before round 1, for the count, sums and sums of
squares of the descriptors over its training split (``query.input_stats``,
:mod:`app.client.input_stats`), pools them into one mean and standard deviation
per descriptor, and stores those in the model's buffers: every hospital, the
server's test evaluation and the saved model then apply one transform. A resumed
run or a transferred model (``init-model``) keeps the statistics it carries.

Not with ``dp`` or ``secure-aggregation`` (refused by the run-config checks): the
release is exact and per hospital, outside their protection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.serverapp import Grid
from torch import nn

from app.client.input_stats import COUNT, QUERY, REPLY_KEY, SQ_SUMS, SUMS
from app.config import RunConfig
from app.server.queries import ask_hospitals
from models.shape import descriptor_layers, pooled_statistics, set_statistics
from strategies.sampling import FederationStopped

log = logging.getLogger(__name__)


@dataclass
class InputStatistics:
    """The pooled standardisation and who contributed to it."""

    mean: np.ndarray
    std: np.ndarray
    records: int
    released: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def history(self) -> dict[str, Any]:
        """The ``input_statistics`` entry of history.json."""
        return {
            "features": "shape descriptors (models/shape.py)",
            "records": self.records,
            "released": sorted(self.released),
            "failed": dict(sorted(self.failed.items())),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }


def _sums(content: RecordDict, width: int) -> tuple[float, np.ndarray, np.ndarray]:
    """A reply's count, sums and sums of squares; ValueError says what is wrong."""
    record = content.config_records.get(REPLY_KEY)
    if record is None:
        raise ValueError(f"no '{REPLY_KEY}' record")
    count = np.asarray(record.get(COUNT, []), dtype=float)
    if count.shape != (1,) or not math.isfinite(count[0]) or count[0] < 2:
        raise ValueError(f"'{COUNT}' must be one count >= 2")
    arrays = []
    for key in (SUMS, SQ_SUMS):
        array = np.asarray(record.get(key, []), dtype=float)
        if array.shape != (width,) or not np.isfinite(array).all():
            raise ValueError(f"'{key}' must be {width} finite numbers")
        arrays.append(array)
    return float(count[0]), arrays[0], arrays[1]


def standardise_inputs(
    grid: Grid, cfg: RunConfig, contract: dict[str, Any], model: nn.Module
) -> InputStatistics | None:
    """Ask the hospitals and store the pooled statistics in ``model``.

    Returns None for a model without descriptor layers (nothing asked). Hospitals
    that fail, reply late or send malformed sums are left out (and named).

    Raises
    ------
    FederationStopped
        When fewer than ``min-hospitals`` hospitals release their sums.
    """
    layers = descriptor_layers(model)
    if not layers:
        return None
    width = layers[0].width
    asked = ask_hospitals(grid, cfg, f"query.{QUERY}", contract, "input-stats")
    sums_by_site, failed = asked.parsed(
        lambda content: _sums(content, width),
        malformed="malformed input statistics",
        label="Input statistics",
    )
    released = list(sums_by_site)
    if len(released) < cfg.min_hospitals:
        raise FederationStopped(
            f"only {len(released)} hospital(s) released input statistics, fewer "
            f"than min-hospitals={cfg.min_hospitals}; cannot standardise the "
            f"model's shape descriptors (model='{cfg.model_name}')."
        )
    parts = list(sums_by_site.values())
    count = sum(n for n, _, _ in parts)
    sums, sq_sums = sum(s for _, s, _ in parts), sum(sq for _, _, sq in parts)
    mean, std = pooled_statistics(count, sums, sq_sums)
    set_statistics(model, mean, std)
    log.info(
        "Shape descriptors standardised from %d hospitals' training splits "
        "(%d records).",
        len(released),
        count,
    )
    return InputStatistics(mean, std, int(count), released, failed)
