"""Ask every connected hospital one question (a ``query.*`` Message) and collect
the answers: the one mechanism behind the cohort-statistics release
(:mod:`app.privacy.cohort_stats`), federated statistics (:mod:`app.stats`), input
statistics (:mod:`app.server.input_stats`) and the decision threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from app.config import RunConfig
from app.server.exchange import send_and_receive
from strategies.sampling import NodeSampler
from strategies.screening import hospital_of

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class QueryReplies:
    """Each answering hospital's reply content, and why the others gave none."""

    replies: dict[str, RecordDict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def parsed(
        self, parse: Callable[[RecordDict], T], *, malformed: str, label: str
    ) -> tuple[dict[str, T], dict[str, str]]:
        """Every reply through ``parse``; the hospitals left out, each logged once.

        A reply ``parse`` refuses (``ValueError``) joins the failed ones as
        ``"<malformed>: <why>"``; each hospital left out is logged as
        ``"<label>: <hospital> left out (<why>)."``.
        """
        values: dict[str, T] = {}
        failed = dict(self.failed)
        for name, content in self.replies.items():
            try:
                values[name] = parse(content)
            except ValueError as err:
                failed[name] = f"{malformed}: {err}"
        for name, why in sorted(failed.items()):
            log.warning("%s: %s left out (%s).", label, name, why)
        return values, failed


def ask_hospitals(
    grid: Grid,
    cfg: RunConfig,
    message_type: str,
    config: Mapping[str, Any],
    group_id: str,
    arrays: ArrayRecord | None = None,
) -> QueryReplies:
    """Send ``config`` (as the ``"config"`` record) to every connected hospital.

    ``arrays`` (a model, as the hospitals expect it encoded) travel as
    ``"arrays"`` when given.

    Waits for ``min-hospitals`` to connect (raising
    :class:`~strategies.sampling.FederationStopped` after
    ``wait-for-hospitals``), then at most ``round-timeout`` for the replies. Error
    replies and silent nodes end up in ``failed``, by hospital name.
    """
    sampler = NodeSampler(cfg.min_hospitals, cfg.wait_for_hospitals, cfg.seed)
    nodes = sampler.connected(grid)
    content: dict[str, Any] = {"config": ConfigRecord(dict(config))}
    if arrays is not None:
        content["arrays"] = arrays
    messages = [
        Message(
            content=RecordDict(content),
            dst_node_id=node,
            message_type=message_type,
            group_id=group_id,
        )
        for node in nodes
    ]
    out = QueryReplies()
    answered = set()
    for reply in send_and_receive(grid, messages, cfg.round_timeout):
        answered.add(reply.metadata.src_node_id)
        name = hospital_of(reply)
        if reply.has_error():
            out.failed[name] = reply.error.reason or "error"
        else:
            out.replies[name] = reply.content
    for node in sorted(set(nodes) - answered):
        out.failed[f"node-{node}"] = (
            f"no reply within round-timeout={cfg.round_timeout}s"
        )
    return out
