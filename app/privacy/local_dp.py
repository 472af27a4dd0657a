"""A hospital's local DP-SGD round: its accountant history lives in ``context.state``.

The ClientApp calls :func:`local_dp_round`; everything that must survive between
rounds (the accountant history, the planned noise multiplier) is kept in one
ConfigRecord of the node's ``context.state``, which never leaves the hospital.

With ``normalisation = "dp-global"`` the hospital has also released its cohort
statistics with the Laplace mechanism (pure ``eps_stats``-DP,
:mod:`app.privacy.cohort_stats`).
By basic sequential composition the hospital's total guarantee is
``(eps_sgd(delta) + eps_stats, delta)``: the reported epsilon, the budget check and
the planned noise all use this total.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from app.config import RunConfig
from app.privacy.accounting import epsilon_of, history_from_record, history_to_record
from app.privacy.cohort_stats import stats_epsilon_spent
from app.privacy.dp_sgd import (
    DPSettings,
    check_budget,
    planned_noise_multiplier,
    sample_rate,
    train_dp,
)
from data.spec import Split
from models.training import TrainSettings

log = logging.getLogger(__name__)

STATE_KEY = "dp-accountant"


@dataclass(frozen=True)
class LocalDPOutcome:
    """Metrics a DP round may release: privacy spent, never training-data statistics."""

    epsilon: float  # total: DP-SGD + cohort statistics
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    sgd_epsilon: float = 0.0
    stats_epsilon: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "dp-epsilon": self.epsilon,
            "dp-sgd-epsilon": self.sgd_epsilon,
            "dp-stats-epsilon": self.stats_epsilon,
            "dp-delta": self.delta,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-sample-rate": self.sample_rate,
            "dp-steps": float(self.steps),
        }


def hospital_budget(cfg: RunConfig, node_config: Mapping[str, Any]) -> float:
    """Return the run's budget, tightened by the hospital's own node config.

    A SuperNode's ``--node-config "dp-epsilon-budget=..."`` can lower the budget,
    never raise it.
    """
    own = node_config.get("dp-epsilon-budget")
    if own is None:
        return cfg.dp_budget
    if isinstance(own, bool) or not isinstance(own, (int, float)) or not own > 0:
        raise ValueError(
            f"node config 'dp-epsilon-budget' must be a number > 0, got {own!r}."
        )
    return min(cfg.dp_budget, float(own))


def dp_settings(
    cfg: RunConfig,
    num_records: int,
    state: RecordDict,
    node_config: Mapping[str, Any] | None = None,
) -> DPSettings:
    """Return this hospital's DP settings.

    A target epsilon is turned into a noise multiplier once (planned over all rounds
    and local epochs, for what the target leaves after the cohort statistics'
    ``dp-stats-epsilon``) and remembered in ``state``.
    """
    sigma = cfg.dp_noise_multiplier
    record = state.config_records.get(STATE_KEY)
    if sigma == 0:
        if record is not None and "planned-noise-multiplier" in record:
            sigma = float(record["planned-noise-multiplier"])
        else:
            sigma = planned_noise_multiplier(
                target_epsilon=cfg.dp_sgd_target_epsilon,
                delta=cfg.dp_delta,
                num_records=num_records,
                batch_size=cfg.batch_size,
                epochs_per_round=cfg.local_epochs,
                rounds=cfg.num_server_rounds,
                accountant=cfg.dp_accountant,
            )
    if num_records * cfg.dp_delta >= 1:
        log.warning(
            "dp-delta=%g is not small against this hospital's %d training records "
            "(delta >= 1/n allows releasing a record outright); use a smaller delta.",
            cfg.dp_delta,
            num_records,
        )
    return DPSettings(
        noise_multiplier=sigma,
        max_grad_norm=cfg.dp_max_grad_norm,
        delta=cfg.dp_delta,
        accountant=cfg.dp_accountant,
        secure_rng=cfg.dp_secure_rng,
        grad_sampler=cfg.dp_grad_sampler,
        budget=hospital_budget(cfg, node_config or {}),
    )


def load_history(state: RecordDict, mechanism: str) -> list[tuple[float, float, int]]:
    """Return the accountant history kept in ``state`` (empty before round 1)."""
    record = state.config_records.get(STATE_KEY)
    return [] if record is None else history_from_record(record, mechanism)


def save_history(
    state: RecordDict, history: list[tuple[float, float, int]], dp: DPSettings
) -> None:
    record = history_to_record(history, dp.accountant)
    record["planned-noise-multiplier"] = dp.noise_multiplier
    state[STATE_KEY] = record


@dataclass(frozen=True)
class RoundBudget:
    """A DP round cleared against the hospital's budget, before any training."""

    dp: DPSettings
    history: list[tuple[float, float, int]]  # before this round
    future: list[tuple[float, float, int]]  # after it, as planned
    epsilon: float  # DP-SGD epsilon after it
    stats_epsilon: float  # spent on cohort statistics


def round_budget(
    cfg: RunConfig,
    state: RecordDict,
    *,
    num_records: int,
    batch_size: int,
    epochs: int,
    node_config: Mapping[str, Any] | None = None,
) -> RoundBudget:
    """Plan this round's DP-SGD over ``num_records`` units of privacy (records,
    or patients for a recommender) and clear it against the budget.

    Raises
    ------
    PrivacyBudgetExhausted
        When this round would take the hospital past its budget.
    """
    dp = dp_settings(cfg, num_records, state, node_config)
    stats_eps = stats_epsilon_spent(state)  # 0 unless it released statistics
    history = load_history(state, dp.accountant)
    if not history:  # remember the planned sigma even if the first round is refused
        state[STATE_KEY] = ConfigRecord(
            {
                **history_to_record([], dp.accountant),
                "planned-noise-multiplier": dp.noise_multiplier,
            }
        )
    future, eps_next = check_budget(
        history,
        dp,
        num_records=num_records,
        batch_size=batch_size,
        epochs=epochs,
        other_epsilon=stats_eps,
    )
    return RoundBudget(dp, history, future, eps_next, stats_eps)


def local_dp_round(
    model: nn.Module,
    train: Split,
    settings: TrainSettings,
    cfg: RunConfig,
    state: RecordDict,
    device: torch.device,
    *,
    seed: int,
    node_config: Mapping[str, Any] | None = None,
) -> LocalDPOutcome:
    """Check the budget, train with DP-SGD and persist the new history in ``state``.

    Raises
    ------
    PrivacyBudgetExhausted
        Before any training when this round would take the hospital past its budget.
    """
    budget = round_budget(
        cfg,
        state,
        num_records=len(train),
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        node_config=node_config,
    )
    dp, history, stats_eps = budget.dp, budget.history, budget.stats_epsilon
    result = train_dp(
        model,
        train,
        settings,
        dp,
        device,
        history=history,
        seed=seed,
        report_epsilon=False,
    )
    save_history(state, result.history, dp)
    # The steps taken are data-independent, so the history is the one just checked.
    epsilon = (
        budget.epsilon
        if result.history == budget.future
        else epsilon_of(result.history, delta=dp.delta, mechanism=dp.accountant)
    )
    return LocalDPOutcome(
        epsilon=epsilon + stats_eps,
        sgd_epsilon=epsilon,
        stats_epsilon=stats_eps,
        delta=dp.delta,
        noise_multiplier=dp.noise_multiplier,
        sample_rate=sample_rate(len(train), settings.batch_size),
        steps=sum(n for _, _, n in result.history),
    )
