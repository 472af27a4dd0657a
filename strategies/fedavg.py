"""FedAvg with reply validation and per-hospital bookkeeping.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from strategies.screening import (
    HOSPITAL_RECORD,
    RoundLedger,
    Screened,
    hospital_of,
    weighted_metrics,
)
from strategies.validation import reply_problem

if TYPE_CHECKING:  # app.secagg's server side imports strategies.screening
    from app.secagg.aggregator import SecureAggregator, SecureSum

__all__ = [
    "HOSPITAL_RECORD",
    "MedFedAvg",
    "RoundLedger",
    "hospital_of",
    "weighted_metrics",
]

log = logging.getLogger(__name__)


class MedFedAvg(Screened, FedAvg):
    """Flower's FedAvg, weighting by ``num-examples``, that drops unsound replies.

    A reply with non-finite values, missing or extra array keys, wrong shapes, or a
    weight <= 0 is logged with its hospital and reason and left out; the rest are
    averaged. With fewer than ``min-hospitals`` sound replies the round is skipped
    and the global model kept unchanged.

    With ``secure`` (run config ``secure-aggregation = true``) hospitals reply with
    masked or encrypted updates and the server only unmasks their sum
    (docs/secure-aggregation.md); per-reply array checks and the anomaly report
    move to the hospitals.
    """

    def __init__(
        self, *, secure: SecureAggregator | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.secure = secure

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.secure is None or not messages:
            return messages
        entry = self.ledger.entry(server_round)
        return self.secure.open_round(server_round, arrays, messages, grid, entry)

    def _reply_problem(
        self, server_round: int, content: RecordDict, *, is_train: bool
    ) -> str | None:
        if not is_train or self.secure is None:
            return super()._reply_problem(server_round, content, is_train=is_train)
        # A masked/encrypted update cannot be inspected: check metrics and its form.
        problem = reply_problem(
            content, self._reference, self.weighted_by_key, check_arrays=False
        )
        return problem or self.secure.reply_problem(server_round, content)

    def secure_sum(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[SecureSum | None, list[Message]]:
        """Screen masked/encrypted replies and unmask only their sum.

        Returns the SecureSum (None if the round could not complete) and the sound
        replies (their metrics are plain aggregates). Central DP adds its noise to
        ``SecureSum.weighted_sum``.
        """
        assert self.secure is not None
        sound = self._screen(server_round, replies, is_train=True)
        entry = self.ledger.entry(server_round)
        if len(sound) < self.min_hospitals:
            entry.setdefault(
                "skipped",
                (
                    f"{len(sound)} sound training replies, fewer than "
                    f"min-hospitals={self.min_hospitals}"
                ),
            )
        # a skipped round still closes the protocol, without unmasking anything
        result = self.secure.close_round(
            server_round, [] if "skipped" in entry else sound, entry
        )
        if result is None or "skipped" in entry:
            entry.setdefault("skipped", "secure aggregation did not complete")
            log.error(
                "Round %d skipped: %s; the global model is unchanged.",
                server_round,
                entry["skipped"],
            )
            return None, sound
        return result, sound

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.secure is None:
            return super().aggregate_train(server_round, replies)
        result, sound = self.secure_sum(server_round, replies)
        if result is None:
            return None, None
        return result.fedavg(), weighted_metrics(
            [msg.content for msg in sound], self.weighted_by_key
        )
