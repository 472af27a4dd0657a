"""What every secure aggregator gives the strategy: only a sum of hospital updates."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from strategies.secagg.vectors import Layout


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
