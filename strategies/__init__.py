"""Aggregation strategies, selected by the run-config key ``strategy``.

Every strategy combines :class:`strategies.screening.Screened` with a Flower
message-API strategy, so all of them sample with a bounded wait, screen replies,
skip rounds below ``min-hospitals`` and report anomalies. Adding one = one file
plus one line in each table below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from strategies.fedadam import MedFedAdam
from strategies.fedavg import MedFedAvg
from strategies.fedmedian import MedFedMedian
from strategies.fedprox import MedFedProx
from strategies.fedtrimmedavg import MedFedTrimmedAvg
from strategies.fedyogi import MedFedYogi
from strategies.krum import MedKrum
from strategies.multikrum import MedMultiKrum
from strategies.screening import Screened

STRATEGIES: dict[str, Callable[..., Screened]] = {
    "fedavg": MedFedAvg,
    "fedprox": MedFedProx,
    "fedadam": MedFedAdam,
    "fedyogi": MedFedYogi,
    "fedmedian": MedFedMedian,
    "fedtrimmedavg": MedFedTrimmedAvg,
    "krum": MedKrum,
    "multikrum": MedMultiKrum,
}

# Strategy-specific keyword arguments, taken from the run config by field name.
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "fedavg": (),
    "fedprox": ("proximal_mu",),
    "fedadam": ("eta", "beta_1", "beta_2", "tau", "learning_rate"),
    "fedyogi": ("eta", "beta_1", "beta_2", "tau", "learning_rate"),
    "fedmedian": (),
    "fedtrimmedavg": ("trim_beta",),
    "krum": ("num_malicious",),
    "multikrum": ("num_malicious", "num_to_keep"),
}

# Strategies whose aggregate resists a minority of arbitrary (Byzantine) updates.
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum")


def build_strategy(name: str, **kwargs: Any) -> Screened:
    """Instantiate the registered strategy ``name``."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}"
        ) from None
    return factory(**kwargs)
