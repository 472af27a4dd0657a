"""Flower client mods: the site policy enforced and every answer logged.

``ClientApp(mods=[audit_mod, policy_mod])`` wraps every handler (train, evaluate
and every query) in both, outside the per-handler ``secure_train_mod``:

- :func:`policy_mod` checks the incoming message's run against the site policy
  (node config ``policy``) before the handler touches any data, and answers a
  violation with an error reply (code :data:`POLICY_CODE`) naming the hospital
  and the rule; after the handler it charges the site's epsilon ledger and drops
  aggregates that rest on fewer than ``min-records`` records.
- :func:`audit_mod` appends one entry per answered message to the hospital's
  audit log (node config ``audit-log``): what left (masked or not) or what was
  refused. If the entry cannot be written, nothing leaves (fail closed).

Without those node-config keys both mods pass messages through unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from app.client.hospital import hospital_name
from app.client.input_stats import COUNT as INPUT_STATS_COUNT
from app.client.input_stats import REPLY_KEY as INPUT_STATS_RECORD
from app.config import RunConfig
from app.governance import rules
from app.governance.audit import AUDIT_KEY, AuditError, append_entry
from app.governance.ledger import EpsilonLedger
from app.governance.policy import POLICY_KEY, SitePolicy, load_policy
from app.privacy.cohort_stats import REPLY_KEY as COHORT_STATS_RECORD
from strategies.screening import ERROR_PREFIX

log = logging.getLogger(__name__)

POLICY_CODE = 4010  # refused: the run breaks the site policy
POLICY_UNUSABLE_CODE = 4011  # refused: the policy could not be applied
AUDIT_UNAVAILABLE_CODE = 4012  # refused: the audit entry could not be written
EPSILON_METRIC = "dp-epsilon"  # the accountant's cumulative epsilon (local DP)
# Released records whose counts must each reach ``min-records``: record -> field.
RELEASED_COUNTS = {
    COHORT_STATS_RECORD: "label-counts",
    INPUT_STATS_RECORD: INPUT_STATS_COUNT,
}

Handler = Callable[[Message, Context], Message]


def _refuse(msg: Message, context: Context, code: int, reason: str) -> Message:
    name = hospital_name(context.node_config)
    log.warning(
        "Hospital %s refused a %s message by its site policy, %s",
        name,
        msg.metadata.message_type,
        reason,
    )
    public = f"{ERROR_PREFIX.format(name=name)}refused by site policy, {reason}"
    return Message(Error(code=code, reason=public), reply_to=msg)


def server_round(msg: Message) -> int | None:
    """The round a server instruction belongs to (queries may carry none)."""
    if not msg.has_content():
        return None
    value = msg.content.config_records.get("config", ConfigRecord()).get("server-round")
    return int(value) if isinstance(value, int) else None


def run_epsilon(cfg: RunConfig, node_config: dict[str, Any]) -> float:
    """The epsilon this hospital lets the run spend here (``inf`` without DP)."""
    if cfg.dp == "local":
        from app.privacy.local_dp import hospital_budget  # Opacus: only under DP

        return hospital_budget(cfg, node_config)
    return cfg.dp_budget if cfg.dp == "central" else math.inf


def _ledger(policy: SitePolicy) -> EpsilonLedger | None:
    if policy.lifetime_epsilon is None or policy.epsilon_ledger is None:
        return None
    return EpsilonLedger.load(policy.epsilon_ledger)


def _request(msg: Message, context: Context, policy: SitePolicy) -> rules.Request:
    cfg = RunConfig.from_run_config(context.run_config)
    node_config = dict(context.node_config)
    ledger = _ledger(policy)
    return rules.Request(
        cfg=cfg,
        # a deployed hospital reads its own kind of data (node config `dataset`)
        dataset=str(node_config.get("dataset") or cfg.dataset),
        server_round=server_round(msg),
        run_epsilon=run_epsilon(cfg, node_config),
        spent_elsewhere=0.0
        if ledger is None
        else ledger.spent_elsewhere(context.run_id),
    )


def policy_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Refuse a message whose run breaks the site policy; filter what leaves."""
    path = context.node_config.get(POLICY_KEY)
    if not path:
        return call_next(msg, context)
    try:
        policy = load_policy(str(path))
        request = _request(msg, context, policy)
    except ValueError as err:  # the policy, ledger, run or node config is bad
        log.error("Hospital policy %s cannot be applied: %s", path, err)
        return _refuse(
            msg,
            context,
            POLICY_UNUSABLE_CODE,
            f"the policy cannot be applied ({type(err).__name__}); "
            "see the hospital's log",
        )
    refusal = rules.check(policy, request)
    if refusal is not None:
        return _refuse(
            msg, context, POLICY_CODE, f"rule '{refusal.rule}': {refusal.reason}"
        )
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    try:
        _charge(policy, context, reply.content)
    except (OSError, ValueError) as err:  # no record of the spend: nothing leaves
        log.error("Epsilon ledger %s: %s", policy.epsilon_ledger, err)
        return _refuse(
            msg, context, POLICY_UNUSABLE_CODE, "the epsilon ledger cannot be written"
        )
    if policy.min_records is None:
        return reply
    return _released(msg, context, reply, policy.min_records)


def reported_epsilon(content: RecordDict) -> float | None:
    """The epsilon the hospital's accountant reports in a reply (``None``: none)."""
    found = [
        float(record[EPSILON_METRIC])
        for record in content.metric_records.values()
        if EPSILON_METRIC in record
    ]
    stats = content.config_records.get(COHORT_STATS_RECORD)
    if stats is not None and isinstance(stats.get("epsilon"), (int, float)):
        found.append(float(stats["epsilon"]))  # type: ignore[arg-type]
    return max(found) if found else None


def _charge(policy: SitePolicy, context: Context, content: RecordDict) -> None:
    """Charge the site's lifetime ledger with the run's spend so far."""
    ledger = _ledger(policy)
    epsilon = reported_epsilon(content)
    if ledger is not None and epsilon is not None:
        ledger.charge(context.run_id, epsilon)


def _released(msg: Message, context: Context, reply: Message, minimum: int) -> Message:
    """The reply without aggregates resting on fewer than ``minimum`` records."""
    content = reply.content
    too_few = any(
        rules.too_few_records(record, minimum)
        for record in content.metric_records.values()
    ) or any(
        min(content.config_records[name].get(field, [minimum])) < minimum  # type: ignore[type-var, arg-type]
        for name, field in RELEASED_COUNTS.items()
        if name in content.config_records
    )
    if too_few:
        return _refuse(
            msg,
            context,
            POLICY_CODE,
            f"rule 'min-records': this {msg.metadata.message_type} reply rests on "
            f"fewer than {minimum} records",
        )
    for name, record in list(content.metric_records.items()):
        kept, dropped = rules.suppress_small(record, minimum)
        if dropped:
            log.info("min-records=%d: suppressed %s", minimum, ", ".join(dropped))
            content[name] = MetricRecord(kept)
    return reply


# --- audit log ----------------------------------------------------------------


def _summary(value: Any) -> Any:
    """A config value as logged: scalars as sent, bytes by their size."""
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, list):
        return [_summary(v) for v in value]
    return value


def sent_content(content: RecordDict) -> dict[str, Any]:
    """What a reply holds: arrays (name, shape, dtype, bytes), metrics, configs."""
    return {
        "arrays": {
            name: [
                {
                    "name": key,
                    "shape": list(array.shape),
                    "dtype": array.dtype,
                    "bytes": len(array.data),
                }
                for key, array in record.items()
            ]
            for name, record in content.array_records.items()
        },
        "metrics": {
            name: dict(record) for name, record in content.metric_records.items()
        },
        "configs": {
            name: {k: _summary(v) for k, v in record.items()}
            for name, record in content.config_records.items()
        },
    }


def audit_fields(msg: Message, context: Context, reply: Message) -> dict[str, Any]:
    """The audit entry (without its chain fields) of ``reply`` to ``msg``."""
    fields: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": int(context.run_id),
        "round": server_round(msg),
        "message_type": msg.metadata.message_type,
        "hospital": hospital_name(context.node_config),
    }
    if reply.has_error():
        code = int(reply.error.code)
        policy = code in (POLICY_CODE, POLICY_UNUSABLE_CODE)
        fields["outcome"] = "refused" if policy else "error"
        fields["error"] = {"code": code, "reason": reply.error.reason}
        return fields
    fields["outcome"] = "sent"
    fields.update(sent_content(reply.content))
    fields["epsilon"] = reported_epsilon(reply.content)
    return fields


def audit_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Append one audit entry per answered message; without one, send nothing."""
    path = context.node_config.get(AUDIT_KEY)
    reply = call_next(msg, context)
    if not path:
        return reply
    try:
        append_entry(Path(str(path)).expanduser(), audit_fields(msg, context, reply))
    except (OSError, AuditError, ValueError, TypeError) as err:
        log.error("Audit log %s: %s; the reply is withheld.", path, err)
        name = hospital_name(context.node_config)
        reason = (
            f"{ERROR_PREFIX.format(name=name)}the hospital's audit log is "
            "unavailable; nothing was sent"
        )
        return Message(Error(code=AUDIT_UNAVAILABLE_CODE, reason=reason), reply_to=msg)
    return reply


GOVERNANCE_MODS = [audit_mod, policy_mod]  # outermost first
