"""What every secure aggregator gives the strategy: only a sum of hospital updates."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from app.secagg.vectors import Layout
from app.server.exchange import send_and_receive
from strategies.screening import hospital_of, note_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecureSum:
    """The only thing a secure aggregator reveals about one round's updates.

    ``weighted_sum`` is ``sum_i r_i * u_i`` over the ``count`` hospitals whose
    update entered the sum, with ``u_i = w_local - w_global`` (clipped by the
    hospital) and ``r_i`` its weight ratio (``num-examples / max-weight``, or 1 with
    unit weighting); ``total_weight`` is ``sum_i r_i``. Central DP adds its noise to
    ``weighted_sum`` (see docs/secure-aggregation.md).
    """

    layout: Layout
    base: np.ndarray  # the round's global model, flattened
    weighted_sum: np.ndarray
    total_weight: float
    count: int

    def mean_update(self) -> np.ndarray:
        """FedAvg's weighted mean update."""
        return self.weighted_sum / self.total_weight

    def fedavg(self) -> ArrayRecord:
        """Return the new global model ``w_global + sum_i r_i u_i / sum_i r_i``."""
        return self.layout.unflatten(self.base + self.mean_update())


class SecureAggregator(Protocol):
    """Server side of a secure aggregation protocol, driven by ``MedFedAvg``.

    ``open_round`` runs the protocol's set-up stages on the sampled hospitals and
    returns the train messages to send; ``reply_problem`` screens one masked or
    encrypted reply; ``close_round`` turns the sound replies into a SecureSum (or
    None when the round cannot be completed).
    """

    name: str

    def open_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        messages: list[Message],
        grid: Grid,
        ledger_entry: dict,
    ) -> list[Message]: ...

    def reply_problem(self, server_round: int, content: RecordDict) -> str | None: ...

    def close_round(
        self, server_round: int, replies: Iterable[Message], ledger_entry: dict
    ) -> SecureSum | None: ...


class StagedExchange:
    """Server half of a multi-stage protocol: one record out to each hospital, one back.

    Both secure-aggregation backends run their set-up stages this way. Each
    message carries a single ConfigRecord named ``record``; a hospital that
    answers with an error, or without that record, is noted in the round's
    ledger (phase ``<phase_prefix>-<stage>``) and left out of the stage's answers.

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait for each stage's replies (the run's ``round-timeout``).
    """

    name: str
    record: str
    phase_prefix: str

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._grid: Grid | None = None

    def _exchange(
        self, message_type: str, records: dict[int, ConfigRecord]
    ) -> list[Message]:
        """Send ``records[node]`` to each node as ``message_type``; return replies."""
        if self._grid is None:
            raise RuntimeError(f"{self.name}: no Grid (open_round was not called)")
        messages = [
            Message(
                RecordDict({self.record: record}),
                message_type=message_type,
                dst_node_id=node,
            )
            for node, record in records.items()
        ]
        return send_and_receive(self._grid, messages, self.timeout)

    def _collect(
        self,
        replies: Iterable[Message],
        stage: str,
        ledger_entry: dict,
        names: dict[int, str] | None = None,
    ) -> dict[int, ConfigRecord]:
        """Return each sound reply's record by node id; note the others.

        ``names``, when given, learns each replying node's hospital name.
        """
        answers: dict[int, ConfigRecord] = {}
        phase = f"{self.phase_prefix}-{stage}"
        for msg in replies:
            node, hospital = msg.metadata.src_node_id, hospital_of(msg)
            if names is not None:
                names[node] = hospital
            if msg.has_error():
                reason = msg.error.reason
                log.warning(
                    "%s %s: hospital %s failed: %s", self.name, stage, hospital, reason
                )
                note_problem(ledger_entry, "errors", hospital, phase, reason)
            elif self.record not in msg.content.config_records:
                note_problem(
                    ledger_entry,
                    "rejected",
                    hospital,
                    phase,
                    f"no {self.record} record",
                )
            else:
                answers[node] = msg.content.config_records[self.record]
        return answers
