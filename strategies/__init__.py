"""Aggregation strategies, selected by the run-config key ``strategy``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from strategies.fedavg import MedFedAvg
from strategies.fedprox import MedFedProx
from strategies.fedyogi import MedFedYogi

STRATEGIES: dict[str, Callable[..., MedFedAvg]] = {
    "fedavg": MedFedAvg,
    "fedprox": MedFedProx,
    "fedyogi": MedFedYogi,
}

# Strategy-specific keyword arguments, taken from the run config by name.
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "fedavg": (),
    "fedprox": ("proximal_mu",),
    "fedyogi": ("eta", "beta_1", "beta_2", "tau", "learning_rate"),
}


def build_strategy(name: str, **kwargs: Any) -> MedFedAvg:
    """Instantiate the registered strategy ``name``."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}"
        ) from None
    return factory(**kwargs)
