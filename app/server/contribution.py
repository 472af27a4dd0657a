"""Each hospital's contribution to the final model, on the held-out metric.

Run config ``contribution = true``: after the last round the server averages the
round's sound updates once per hospital *without* that hospital (weighted by
``num-examples``, as FedAvg does) and asks every hospital to evaluate each such
model on its held-out split. A hospital's contribution is the federation's
held-out metric of the final round minus the metric of the model without its
update: a one-round leave-one-out influence estimate (the cheap form of
leave-one-site-out retraining, which costs a whole run per hospital). It costs
one evaluation round per hospital; the updates it needs are the plain ones, so
it is refused with secure aggregation. The figures go to ``history.json``
(``contributions``) and the report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from app.server.exchange import send_and_receive
from strategies.screening import FEDERATED_EVALUATE

log = logging.getLogger(__name__)

# The held-out metric a contribution is measured on, by task (first present).
METRICS: dict[str, tuple[str, ...]] = {
    "recommendation": ("hr@10",),
    "tabular": ("auc", "accuracy"),
    "imaging": ("auc", "accuracy"),
}


def without(
    updates: Sequence[tuple[str, ArrayRecord, float]], left_out: str
) -> ArrayRecord:
    """The ``num-examples``-weighted mean of every update but ``left_out``'s."""
    kept = [(arrays, weight) for name, arrays, weight in updates if name != left_out]
    total = sum(weight for _, weight in kept)
    out = {}
    for key in kept[0][0]:
        mean = sum(a[key].numpy().astype(np.float64) * w for a, w in kept) / total
        out[key] = Array(mean.astype(kept[0][0][key].numpy().dtype))
    return ArrayRecord(out)


@dataclass
class SiteContribution:
    """Round hook: after the last round, each hospital's leave-one-out influence."""

    strategy: Any  # a Screened strategy (keeps the last round's sound updates)
    grid: Grid
    task: str
    num_rounds: int
    timeout: float
    config: Mapping[str, Any]
    recorder: Any  # RunRecorder

    def __call__(self, server_round: int, arrays: ArrayRecord, _: ArrayRecord):
        updates = getattr(self.strategy, "last_updates", [])
        if server_round != self.num_rounds or len(updates) < 2:
            return
        federated = self.strategy.ledger.rounds.get(server_round, {}).get(
            FEDERATED_EVALUATE, {}
        )
        metric = next((m for m in METRICS[self.task] if m in federated), None)
        if metric is None:
            log.warning("No federated held-out metric: contributions not measured.")
            return
        contributions = {}
        for name, _, _ in updates:
            value = self._evaluate(without(updates, name), metric)
            if value is not None:
                contributions[name] = float(federated[metric]) - value
        self.recorder.note(contributions={"metric": metric, "sites": contributions})
        for name, value in sorted(contributions.items(), key=lambda kv: -kv[1]):
            log.info("Contribution of %s: %+.4f %s", name, value, metric)

    def _evaluate(self, arrays: ArrayRecord, metric: str) -> float | None:
        """The hospitals' weighted held-out ``metric`` of ``arrays`` (None: none)."""
        messages = [
            Message(
                RecordDict(
                    {"arrays": arrays, "config": ConfigRecord(dict(self.config))}
                ),
                dst_node_id=node,
                message_type=MessageType.EVALUATE,
            )
            for node in self.grid.get_node_ids()
        ]
        replies = send_and_receive(self.grid, messages, self.timeout)
        pairs = []
        for reply in replies:
            if reply.has_error():
                continue
            metrics = next(iter(reply.content.metric_records.values()))
            if metric in metrics and metrics.get("num-examples", 0) > 0:
                pairs.append((float(metrics[metric]), float(metrics["num-examples"])))
        if not pairs:
            return None
        values, weights = zip(*pairs, strict=True)
        return float(np.average(values, weights=weights))
