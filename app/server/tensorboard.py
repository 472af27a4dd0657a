"""Optional TensorBoard event files (run-config ``tensorboard = true``).

Scalars per round under ``<run>/tensorboard/``: the server-side evaluation as
``server/<metric>`` in the ``server`` folder, and each hospital's reported metrics as
``hospital/<phase>/<metric>`` in a folder per hospital, so TensorBoard overlays the
hospitals (one "run" each) on one chart per metric.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from app.server.history import RoundEntry

TENSORBOARD_DIR = "tensorboard"


class TensorBoardUnavailable(RuntimeError):
    """``tensorboard = true`` was asked for but the package is not installed."""


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises ImportError when tensorboard is absent
        raise TensorBoardUnavailable(
            "run-config 'tensorboard = true' needs the 'tensorboard' package, which is "
            "not installed here: pip install 'medflower[tensorboard]' (or "
            "'tensorboard'), or run with tensorboard=false."
        ) from err
    return SummaryWriter


def _scalar(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# Constant per hospital: not worth a chart.
SKIPPED_KEYS = ("num-examples", "val-num-examples")
SKIPPED_PREFIXES = ("label-count-",)


class TensorBoardLogger:
    """Writes each round's history entry as TensorBoard scalars."""

    def __init__(self, run_dir: Path) -> None:
        self.log_dir = run_dir / TENSORBOARD_DIR
        self._writer_cls = _summary_writer()
        self.writers: dict[str, Any] = {}

    def _writer(self, folder: str) -> Any:
        if folder not in self.writers:
            self.writers[folder] = self._writer_cls(log_dir=str(self.log_dir / folder))
        return self.writers[folder]

    def log_round(self, entry: RoundEntry) -> None:
        step = entry.round
        for key, value in entry.server.items():
            if (v := _scalar(value)) is not None:
                self._writer("server").add_scalar(f"server/{key}", v, step)
        for name, phases in (entry.hospitals or {}).items():
            writer = self._writer(_folder(name))
            for phase, metrics in phases.items():
                for key, value in (metrics or {}).items():
                    if key in SKIPPED_KEYS or key.startswith(SKIPPED_PREFIXES):
                        continue
                    if (v := _scalar(value)) is not None:
                        writer.add_scalar(f"hospital/{phase}/{key}", v, step)
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _folder(name: str) -> str:
    """Turn a hospital name into a folder name (no separators; never 'server')."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return f"hospital-{safe}" if safe in ("", "server") else safe
