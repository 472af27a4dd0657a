"""Krum: keep the single hospital model closest to its neighbours.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017, https://arxiv.org/abs/1703.02757
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import Krum

from strategies.screening import Screened


def check_malicious(num_malicious: int) -> None:
    if num_malicious < 0:
        raise ValueError(f"num-malicious must be >= 0, got {num_malicious}.")


class MedKrum(Screened, Krum):
    """Krum over screened replies.

    Selects the reply with the smallest sum of squared distances to its
    ``n - f - 2`` nearest replies, ``f`` = ``num-malicious``.

    Blanchard et al.'s guarantee needs ``n > 2f + 2`` sound replies.
    """

    def __init__(self, *, num_malicious: int, **kwargs: Any) -> None:
        check_malicious(num_malicious)
        super().__init__(num_malicious_nodes=num_malicious, **kwargs)
