"""FedMedian: the coordinate-wise median of the hospitals' models.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018, https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedMedian

from strategies.screening import Screened


class MedFedMedian(Screened, FedMedian):
    """Coordinate-wise median of the screened replies (unweighted).

    Tolerates fewer than half the hospitals sending arbitrary values.
    """
