"""FedProx: FedAvg aggregation, with a proximal term added by each hospital.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
https://arxiv.org/abs/1812.06127
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from strategies.fedavg import MedFedAvg


class MedFedProx(MedFedAvg):
    """Sends ``proximal-mu`` with every training round.

    The hospital minimises ``loss + (mu / 2) * sum ||w - w_global||^2`` (the
    squared distance to the round's global weights); aggregation is FedAvg's.
    """

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        if not proximal_mu > 0:
            raise ValueError(f"proximal-mu must be > 0 for FedProx, got {proximal_mu}.")
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["proximal-mu"] = self.proximal_mu
        return super().configure_train(server_round, arrays, config, grid)
