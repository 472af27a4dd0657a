"""The federated-statistics query a server sends and every hospital checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

QUERY = "federated_stats"  # message type ``query.federated_stats``
REPLY_KEY = "federated-stats"
# ``ranges``: per-feature counts and extremes (to agree on histogram edges);
# ``summary``: everything else over those edges. Imaging has fixed edges ([0, 1]).
STAGES = ("ranges", "summary")
NOISES = ("none", "laplace", "gaussian")
QUANTILES = (0.25, 0.5, 0.75)


class QueryError(ValueError):
    """A statistics query is malformed; the message names the field."""


@dataclass(frozen=True)
class StatsQuery:
    """What a hospital is asked to release, and under which protection.

    ``lower``/``upper`` are the histogram range of each tabular feature (public:
    from the ranges stage or the dataset's a-priori bounds); imaging histograms
    span [0, 1]. ``min_count`` is the coordinator's suppression threshold; a
    hospital applies the larger of it and its own minimum.
    """

    task: str
    stage: str
    num_classes: int
    min_count: int = 10
    bins: int = 10
    noise: str = "none"
    epsilon: float = 0.0
    delta: float = 0.0
    lower: tuple[float, ...] = ()
    upper: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in ("tabular", "imaging"):
            raise QueryError(f"statistics query: unknown task {self.task!r}.")
        if self.stage not in STAGES:
            raise QueryError(f"statistics query: unknown stage {self.stage!r}.")
        if self.noise not in NOISES:
            raise QueryError(f"statistics query: unknown noise {self.noise!r}.")
        if self.num_classes < 1 or self.bins < 2 or self.min_count < 0:
            raise QueryError(
                "statistics query: 'num-classes' >= 1, 'bins' >= 2 and "
                "'min-count' >= 0 are required."
            )
        if self.noise != "none" and not (
            self.epsilon > 0 and math.isfinite(self.epsilon)
        ):
            raise QueryError("statistics query: noise needs 'epsilon' > 0.")
        if self.noise == "gaussian" and not 0 < self.delta < 1:
            raise QueryError("statistics query: Gaussian noise needs 0 < 'delta' < 1.")
        if len(self.lower) != len(self.upper) or any(
            not hi > lo for lo, hi in zip(self.lower, self.upper, strict=True)
        ):
            raise QueryError("statistics query: 'lower' < 'upper' for every feature.")

    @property
    def noisy(self) -> bool:
        return self.noise != "none"

    def edges(self) -> np.ndarray:
        """Histogram bin edges, ``(features, bins + 1)`` (imaging: one row, [0, 1])."""
        lower = np.asarray(self.lower or (0.0,), dtype=float)
        upper = np.asarray(self.upper or (1.0,), dtype=float)
        steps = np.linspace(0.0, 1.0, self.bins + 1)
        return lower[:, None] + (upper - lower)[:, None] * steps[None, :]

    def to_config(self) -> dict[str, Any]:
        """The query as ConfigRecord values."""
        return {
            "task": self.task,
            "stage": self.stage,
            "num-classes": self.num_classes,
            "min-count": self.min_count,
            "bins": self.bins,
            "noise": self.noise,
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
            "lower": [float(v) for v in self.lower],
            "upper": [float(v) for v in self.upper],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StatsQuery:
        """Parse a received query; QueryError names a missing or bad field."""
        try:
            return cls(
                task=str(config["task"]),
                stage=str(config["stage"]),
                num_classes=int(config["num-classes"]),
                min_count=int(config["min-count"]),
                bins=int(config["bins"]),
                noise=str(config["noise"]),
                epsilon=float(config["epsilon"]),
                delta=float(config["delta"]),
                lower=tuple(float(v) for v in config.get("lower", [])),
                upper=tuple(float(v) for v in config.get("upper", [])),
            )
        except KeyError as err:
            raise QueryError(f"statistics query: missing field {err}.") from None
        except (TypeError, ValueError) as err:
            if isinstance(err, QueryError):
                raise
            raise QueryError(f"statistics query: bad value ({err}).") from None
