"""Aggregation strategies, selected by the run-config key ``strategy``.

Every strategy combines :class:`strategies.screening.Screened` with a Flower
message-API strategy, so all of them sample with a bounded wait, screen replies,
skip rounds below ``min-hospitals`` and report anomalies. Adding one = one file
plus one :class:`StrategyRecord` below. The records name their class as a string,
so the run config can check a strategy name without importing Flower's strategies.

- one file per strategy: ``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi``,
  ``fedmedian``, ``fedtrimmedavg``, ``krum``, ``multikrum``
- helpers they build on: ``screening`` (the ``Screened`` mixin and round ledger),
  ``sampling`` (bounded waits), ``validation`` (reply checks), ``anomaly`` (update
  report), ``fedopt`` (server-optimiser state of FedAdam/FedYogi)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data.lazy import LazyTarget

if TYPE_CHECKING:
    from strategies.screening import Screened


@dataclass(frozen=True)
class StrategyRecord(LazyTarget):
    """One registered strategy.

    Attributes
    ----------
    target
        ``"module:class"`` of the strategy, imported when one is built.
    options
        Its keyword arguments beyond the common ones, taken from the run config by
        field name.
    robust
        Its aggregate resists a minority of arbitrary (Byzantine) updates.
    weighted_mean
        Its aggregate is the weighted mean of the updates: secure aggregation can
        compute it from their sum, and central DP can replace it by a clipped,
        noised mean. Robust rules and server optimisers need each update.
    """

    options: tuple[str, ...] = ()
    robust: bool = False
    weighted_mean: bool = False


_SERVER_OPTIMISER = ("eta", "beta_1", "beta_2", "tau", "learning_rate")

STRATEGIES: dict[str, StrategyRecord] = {
    "fedavg": StrategyRecord("strategies.fedavg:MedFedAvg", weighted_mean=True),
    "fedprox": StrategyRecord(
        "strategies.fedprox:MedFedProx", ("proximal_mu",), weighted_mean=True
    ),
    "fedadam": StrategyRecord("strategies.fedadam:MedFedAdam", _SERVER_OPTIMISER),
    "fedyogi": StrategyRecord("strategies.fedyogi:MedFedYogi", _SERVER_OPTIMISER),
    "fedmedian": StrategyRecord("strategies.fedmedian:MedFedMedian", robust=True),
    "fedtrimmedavg": StrategyRecord(
        "strategies.fedtrimmedavg:MedFedTrimmedAvg", ("trim_beta",), robust=True
    ),
    "krum": StrategyRecord("strategies.krum:MedKrum", ("num_malicious",), robust=True),
    "multikrum": StrategyRecord(
        "strategies.multikrum:MedMultiKrum",
        ("num_malicious", "num_to_keep"),
        robust=True,
    ),
}


def weighted_mean_strategies() -> tuple[str, ...]:
    """Names of the strategies whose aggregate is a weighted mean of updates."""
    return tuple(name for name, rec in STRATEGIES.items() if rec.weighted_mean)


def build_strategy(name: str, **kwargs: Any) -> Screened:
    """Instantiate the registered strategy ``name``."""
    try:
        record = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}"
        ) from None
    return record.load()(**kwargs)
