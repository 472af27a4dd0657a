"""Multi-Krum: average the ``m`` hospital models with the best Krum scores.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017, https://arxiv.org/abs/1703.02757 (Multi-Krum, Sec. 4)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp.strategy import MultiKrum

from strategies.krum import check_malicious
from strategies.screening import Screened


class MedMultiKrum(Screened, MultiKrum):
    """Averages (weighted by ``num-examples``) the ``num-to-keep`` best-scored replies.

    ``num-to-keep = 0`` keeps ``n - num-malicious`` of the ``n`` sound replies of
    each round (at least one).
    """

    def __init__(self, *, num_malicious: int, num_to_keep: int, **kwargs: Any) -> None:
        check_malicious(num_malicious)
        if num_to_keep < 0:
            raise ValueError(f"num-to-keep must be >= 0, got {num_to_keep}.")
        super().__init__(
            num_malicious_nodes=num_malicious,
            num_nodes_to_select=max(num_to_keep, 1),
            **kwargs,
        )
        self.num_to_keep = num_to_keep

    def _check_and_log_replies(
        self, replies: Iterable[Message], is_train: bool, validate: bool = True
    ) -> tuple[list[Message], list[Message]]:
        # Called by MultiKrum.aggregate_train with the screened replies only.
        valid, errors = super()._check_and_log_replies(replies, is_train, validate)
        if is_train and self.num_to_keep == 0:
            self.num_nodes_to_select = max(1, len(valid) - self.num_malicious_nodes)
        return valid, errors
