"""The hospital's side of ``query.federated_stats``: load, answer, reply.

The reply carries the release (aggregates only, see :mod:`app.stats.hospital`)
and the hospital's name, nothing else. A noisy release is made once per run and
kept in ``context.state``: asking again returns the same numbers (no new
spend); asking something else under noise is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict

from app.client.hospital import load_site_records
from app.config import RunConfig
from app.governance.policy import POLICY_KEY, load_policy
from app.logs import route_to_flower
from app.stats.hospital import answer
from app.stats.query import REPLY_KEY, QueryError, StatsQuery
from strategies.screening import named_content

STATE_KEY = "federated-stats"  # a noisy release, once per run (context.state)
MIN_RECORDS_KEY = "min-records"


def hospital_min_records(node_config: Mapping[str, Any]) -> int:
    """This hospital's own minimum count (0: none).

    The larger of the site policy's ``min-records`` rule (node config ``policy``,
    app/governance/policy.py) and a bare ``--node-config "min-records=20"``.
    """
    value = node_config.get(MIN_RECORDS_KEY, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"node config '{MIN_RECORDS_KEY}' must be an integer >= 0, got {value!r}."
        )
    if POLICY_KEY in node_config:
        value = max(value, load_policy(str(node_config[POLICY_KEY])).min_records or 0)
    return value


def _kept_release(query: StatsQuery, state: RecordDict, make: Any) -> dict[str, Any]:
    """A noisy release is made once per run; no noise: made afresh."""
    if not query.noisy:
        return make()
    asked = json.dumps(query.to_config(), sort_keys=True)
    kept = state.config_records.get(STATE_KEY)
    if kept is not None:
        if kept["query"] != asked:
            raise QueryError(
                "this hospital already released noisy statistics in this run; "
                "a different query would spend its budget again."
            )
        return {k: v for k, v in kept.items() if k != "query"}
    record = make()
    state[STATE_KEY] = ConfigRecord({**record, "query": asked})  # spent
    return record


def stats_reply(msg: Message, context: Context) -> Message:
    """This hospital's answer to a ``query.federated_stats`` message."""
    route_to_flower()
    cfg = RunConfig.from_run_config(context.run_config)
    config = msg.content.config_records.get("config", ConfigRecord())
    query = StatsQuery.from_config(config)
    minimum = hospital_min_records(context.node_config)
    records = load_site_records(cfg, context.node_config)
    release = _kept_release(
        query,
        context.state,
        lambda: answer(records, query, min_records=minimum).to_record(),
    )
    content = named_content(records.name, {REPLY_KEY: ConfigRecord(release)})
    return Message(content=content, reply_to=msg)
