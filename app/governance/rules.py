"""Each rule of the site policy as a check of an incoming message's run.

:func:`check` runs the rules in :data:`RULES` order and returns the first
:class:`Refusal` (the rule and a reason), or ``None`` when the run complies. A
reason names settings only (the run's and the site's), never anything computed
from the hospital's data, so it may leave the hospital.

:func:`suppress_small` is the ``min-records`` rule: it drops every released
aggregate (metric) that rests on fewer records than the site's minimum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.config import RunConfig
from app.governance.policy import SitePolicy

WEIGHT_KEY = "num-examples"  # the records behind a reply's metrics
VAL_SUPPORT_KEY = "val-num-examples"  # the records behind a train reply's val_*
VAL_PREFIX = "val_"
LABEL_COUNT_PREFIX = "label-count-"  # strategies.screening.LABEL_COUNT_PREFIX


@dataclass(frozen=True)
class Refusal:
    """Why this hospital refuses a message: the policy rule and a public reason."""

    rule: str
    reason: str


@dataclass(frozen=True)
class Request:
    """What the rules look at: the run's settings and what the site has spent.

    ``run_epsilon`` is the epsilon this hospital's accountant will let the run
    spend here (the run's budget, tightened by the node config), ``inf`` without
    local or central DP; ``spent_elsewhere`` is the site's ledger minus this run.
    """

    cfg: RunConfig
    dataset: str
    server_round: int | None
    run_epsilon: float
    spent_elsewhere: float = 0.0


Rule = Callable[[SitePolicy, Request], str | None]


def _allowed(what: str, allowed: tuple[str, ...] | None, value: str) -> str | None:
    if allowed is None or value in allowed:
        return None
    return f"the site allows {what} {', '.join(allowed)}; the run asks for {value!r}"


def _task(policy: SitePolicy, req: Request) -> str | None:
    return _allowed("tasks", policy.tasks, req.cfg.task)


def _dataset(policy: SitePolicy, req: Request) -> str | None:
    return _allowed("datasets", policy.datasets, req.dataset)


def _model(policy: SitePolicy, req: Request) -> str | None:
    return _allowed("models", policy.models, req.cfg.model_name)


def _dp(policy: SitePolicy, req: Request) -> str | None:
    if policy.dp is None or req.cfg.dp == policy.dp:
        return None
    return f"the site requires dp='{policy.dp}'; the run has dp='{req.cfg.dp}'"


def _max_epsilon(policy: SitePolicy, req: Request) -> str | None:
    limit = policy.max_epsilon
    if limit is None or req.run_epsilon <= limit:
        return None
    if math.isinf(req.run_epsilon):
        return (
            f"the site allows at most epsilon {limit:g} per run; the run "
            f"(dp='{req.cfg.dp}') sets no epsilon budget"
        )
    return (
        f"the site allows at most epsilon {limit:g} per run; the run may spend "
        f"{req.run_epsilon:g}"
    )


def _lifetime_epsilon(policy: SitePolicy, req: Request) -> str | None:
    limit = policy.lifetime_epsilon
    if limit is None:
        return None
    if req.cfg.dp != "local":
        return (
            f"the site keeps a lifetime epsilon budget, accounted by its own DP "
            f"accountant: it needs dp='local'; the run has dp='{req.cfg.dp}'"
        )
    left = max(limit - req.spent_elsewhere, 0.0)
    if req.run_epsilon <= left:
        return None
    return (
        f"the run may spend epsilon {req.run_epsilon:g}; the site has {left:g} "
        f"left of its lifetime budget {limit:g}"
    )


def _secure_aggregation(policy: SitePolicy, req: Request) -> str | None:
    if not policy.secure_aggregation or req.cfg.secure_aggregation:
        return None
    return "the site requires secure aggregation; the run has secure-aggregation=false"


def _max_rounds(policy: SitePolicy, req: Request) -> str | None:
    limit = policy.max_rounds
    if limit is None:
        return None
    rounds = max(req.cfg.num_server_rounds, req.server_round or 0)
    if rounds <= limit:
        return None
    return f"the site allows at most {limit} rounds; the run asks for {rounds}"


# Rule name (the policy.toml key it enforces) -> check, in the order applied.
RULES: dict[str, Rule] = {
    "tasks": _task,
    "datasets": _dataset,
    "models": _model,
    "dp": _dp,
    "max-epsilon": _max_epsilon,
    "lifetime-epsilon": _lifetime_epsilon,
    "secure-aggregation": _secure_aggregation,
    "max-rounds": _max_rounds,
}


def check(policy: SitePolicy, request: Request) -> Refusal | None:
    """The first rule ``request`` breaks, or ``None`` when it complies."""
    for rule, broken in RULES.items():
        if (reason := broken(policy, request)) is not None:
            return Refusal(rule, reason)
    return None


def _support(key: str, value: Any, metrics: Mapping[str, Any]) -> float:
    """The number of records the metric ``key`` rests on (``nan``: unknown)."""
    if key.startswith(LABEL_COUNT_PREFIX):
        return float(value)  # a count is its own support
    if key.startswith(VAL_PREFIX) or key == VAL_SUPPORT_KEY:
        return float(metrics.get(VAL_SUPPORT_KEY, math.nan))
    return float(metrics.get(WEIGHT_KEY, math.nan))


def suppress_small(
    metrics: Mapping[str, Any], minimum: int
) -> tuple[dict[str, Any], list[str]]:
    """Drop the metrics that rest on fewer than ``minimum`` records.

    A train reply's ``val_*`` metrics rest on the held-out split
    (``val-num-examples``), a ``label-count-<k>`` on itself, everything else on the
    reply's ``num-examples``; a metric whose support is unknown is dropped too.
    ``num-examples`` stays: the server needs the weight (a reply that rests on too
    few records is refused as a whole, see :func:`too_few_records`).

    Returns
    -------
    tuple
        The metrics kept and the names of those dropped.
    """
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in metrics.items():
        if key == WEIGHT_KEY:
            kept[key] = value
            continue
        support = _support(key, value, metrics)
        if support >= minimum:  # False for nan: unknown support is suppressed
            kept[key] = value
        else:
            dropped.append(key)
    return kept, dropped


def too_few_records(metrics: Mapping[str, Any], minimum: int) -> bool:
    """Whether a reply (its model update or metrics) rests on too few records."""
    weight = metrics.get(WEIGHT_KEY)
    return isinstance(weight, (int, float)) and weight < minimum
