"""FedTrimmedAvg: per coordinate, drop the extreme values and average the rest.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018, https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedTrimmedAvg

from strategies.screening import Screened


class MedFedTrimmedAvg(Screened, FedTrimmedAvg):
    """Coordinate-wise trimmed mean of the screened replies (unweighted).

    ``trim-beta`` is the fraction cut at *each* end, in [0, 0.5); with ``n``
    hospitals, ``floor(trim-beta * n)`` values are dropped at each end.
    """

    def __init__(self, *, trim_beta: float, **kwargs: Any) -> None:
        if not 0.0 <= trim_beta < 0.5:
            raise ValueError(f"trim-beta must be in [0, 0.5), got {trim_beta}.")
        super().__init__(beta=trim_beta, **kwargs)
