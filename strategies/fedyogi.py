"""FedYogi: the server applies a Yogi step (additive second moment) to the mean update.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
https://arxiv.org/abs/2003.00295
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedYogi

from strategies.fedavg import MedFedAvg
from strategies.validation import match_dtypes


class MedFedYogi(FedYogi, MedFedAvg):
    """Flower's FedYogi on top of :class:`MedFedAvg`'s screened, weighted mean.

    Method order: FedYogi's ``aggregate_train`` asks ``MedFedAvg`` for the mean of
    the sound replies (bad replies are dropped and logged there), then takes the
    server step ``x + eta * m / (sqrt(v) + tau)``. Settings: ``eta`` (server
    learning rate), ``beta-1``, ``beta-2``, ``tau``; ``learning-rate`` is the
    hospitals' rate (Flower only logs it as ``eta_l``).
    """

    def __init__(
        self,
        *,
        eta: float,
        beta_1: float,
        beta_2: float,
        tau: float,
        learning_rate: float = 0.05,
        min_hospitals: int = 2,
        **kwargs: Any,
    ) -> None:
        if not eta > 0:
            raise ValueError(f"eta (server learning rate) must be > 0, got {eta}.")
        if not (0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ValueError(
                f"beta-1 and beta-2 must be in [0, 1), got {beta_1} and {beta_2}."
            )
        if not tau > 0:
            raise ValueError(f"tau (adaptivity) must be > 0, got {tau}.")
        for key in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes"):
            kwargs.setdefault(key, min_hospitals)
        super().__init__(
            eta=eta,
            eta_l=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            tau=tau,
            **kwargs,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        # The Yogi step adds float64 to integer buffers: send the model's own dtypes.
        if arrays is not None:
            arrays = match_dtypes(arrays, self._dtypes)
        return arrays, metrics
