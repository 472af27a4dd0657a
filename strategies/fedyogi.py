"""FedYogi: the server applies Yogi (additive second-moment update) to the mean update.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
https://arxiv.org/abs/2003.00295
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedYogi

from strategies.fedopt import ServerOptimizer


class MedFedYogi(ServerOptimizer, FedYogi):
    """Screened replies are averaged; the mean update drives a server Yogi step.

    Settings: ``eta``, ``beta-1``, ``beta-2``, ``tau``. Moments are saved in
    checkpoints.
    """
