"""FedAvg with reply validation and per-hospital bookkeeping.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from strategies.screening import (
    HOSPITAL_RECORD,
    RoundLedger,
    Screened,
    hospital_of,
    weighted_metrics,
)

__all__ = ["HOSPITAL_RECORD", "MedFedAvg", "RoundLedger", "hospital_of", "weighted_metrics"]


class MedFedAvg(Screened, FedAvg):
    """Flower's FedAvg, weighting by ``num-examples``, that drops unsound replies.

    A reply with non-finite values, missing or extra array keys, wrong shapes, or a
    weight <= 0 is logged with its hospital and reason and left out; the rest are
    averaged. With fewer than ``min-hospitals`` sound replies the round is skipped
    and the global model kept unchanged.
    """
