"""FedAdam: the server applies Adam to the averaged update.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
https://arxiv.org/abs/2003.00295
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from strategies.fedopt import ServerOptimizer


class MedFedAdam(ServerOptimizer, FedAdam):
    """Screened replies are averaged; the mean update drives a server Adam step.

    Settings: ``eta`` (server learning rate), ``beta-1``, ``beta-2`` (moment decay),
    ``tau`` (adaptivity). Moments are saved in checkpoints.
    """
