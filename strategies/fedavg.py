"""FedAvg with reply validation and per-hospital bookkeeping.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from strategies.validation import (
    Reference,
    dtypes_of,
    match_dtypes,
    reference_of,
    reply_problem,
)

log = logging.getLogger(__name__)

HOSPITAL_RECORD = "hospital"


class RoundLedger:
    """Per-round, per-hospital record of what each hospital reported.

    Flower's ``Result`` keeps only aggregates; clinical users need to see each
    site. Values are aggregate metrics only (no records leave a hospital).
    """

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, Any]] = {}

    def entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(
            server_round, {"train": {}, "evaluate": {}, "rejected": {}, "errors": {}}
        )


def hospital_of(msg: Message) -> str:
    """The hospital name a reply carries, else its node id."""
    if msg.has_content() and HOSPITAL_RECORD in msg.content.config_records:
        name = msg.content.config_records[HOSPITAL_RECORD].get("name")
        if isinstance(name, str) and name:
            return name
    return f"node-{msg.metadata.src_node_id}"


LABEL_COUNT_PREFIX = "label-count-"


def label_count_metrics(counts: list[int]) -> dict[str, int]:
    """A hospital's training records per class as metrics ``label-count-<class>``.

    Aggregate counts only (no record); the run report draws them per hospital.
    """
    return {f"{LABEL_COUNT_PREFIX}{k}": int(c) for k, c in enumerate(counts)}


def weighted_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each scalar metric over the replies that report it.

    Hospitals may omit a metric that is undefined for them (the AUC of a
    single-class split), so keys need not match; list-valued metrics are skipped.
    Label counts (``label-count-<class>``) are summed: the federation's totals.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for content in contents:
        metrics = next(iter(content.metric_records.values()))
        w = float(metrics[weight_key])
        for key, value in metrics.items():
            if key == weight_key or isinstance(value, list):
                continue
            if key.startswith(LABEL_COUNT_PREFIX):
                sums[key] = sums.get(key, 0.0) + float(value)
                weights[key] = 1.0
                continue
            sums[key] = sums.get(key, 0.0) + w * float(value)
            weights[key] = weights.get(key, 0.0) + w
    return MetricRecord({k: sums[k] / weights[k] for k in sums})


class MedFedAvg(FedAvg):
    """Flower's FedAvg, weighting by ``num-examples``, that drops unsound replies.

    A reply with non-finite values, missing or extra array keys, wrong shapes, or a
    weight <= 0 is logged with its hospital and reason and left out; the rest are
    averaged. If nothing valid is left the round is recorded as failed and the
    global model is kept unchanged.
    """

    def __init__(self, *, min_hospitals: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("min_available_nodes", min_hospitals)
        kwargs.setdefault("min_train_nodes", min_hospitals)
        kwargs.setdefault("min_evaluate_nodes", min_hospitals)
        super().__init__(**kwargs)
        self.ledger = RoundLedger()
        self._reference: Reference = {}
        self._dtypes: dict[str, Any] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = reference_of(arrays)
        self._dtypes = dtypes_of(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def _screen(
        self, server_round: int, replies: Iterable[Message], *, is_train: bool
    ) -> list[Message]:
        """Keep sound replies; record every hospital's outcome in the ledger."""
        entry = self.ledger.entry(server_round)
        phase = "train" if is_train else "evaluate"
        sound: list[Message] = []
        for msg in replies:
            name = hospital_of(msg)
            if msg.has_error():
                reason = msg.error.reason
                log.warning("Round %d %s: hospital %s replied with an error: %s",
                            server_round, phase, name, reason)
                entry["errors"][name] = {"phase": phase, "reason": reason}
                continue
            problem = reply_problem(
                msg.content, self._reference, self.weighted_by_key, check_arrays=is_train
            )
            if problem is not None:
                log.warning("Round %d %s: dropped the reply of hospital %s: %s",
                            server_round, phase, name, problem)
                entry["rejected"][name] = {"phase": phase, "reason": problem}
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            entry[phase][name] = dict(metrics)
            sound.append(msg)
        return sound

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sound = self._screen(server_round, replies, is_train=True)
        if not sound:
            self.ledger.entry(server_round)["failed"] = "no valid training replies"
            log.error("Round %d: no valid training reply; the global model is unchanged.",
                      server_round)
            return None, None
        contents = [msg.content for msg in sound]
        mean = aggregate_arrayrecords(contents, self.weighted_by_key)
        return (
            match_dtypes(mean, self._dtypes),
            weighted_metrics(contents, self.weighted_by_key),
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        sound = self._screen(server_round, replies, is_train=False)
        if not sound:
            return None
        return weighted_metrics([msg.content for msg in sound], self.weighted_by_key)
