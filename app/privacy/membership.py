"""Membership-inference attacks: does a model reveal who was in its training set.

Loss-threshold attack (Yeom et al., CSF 2018, https://arxiv.org/abs/1709.01604):
training records tend to have lower loss, so ``-loss`` is the membership score.
Confidence attack: the probability given to the true class. Both are scored over
every threshold (ROC AUC, and TPR at 1% FPR as recommended by Carlini et al.,
S&P 2022, https://arxiv.org/abs/2112.03570). AUC 0.5 = the attacker learns nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from data.spec import Split
from models.training import predict_proba


@dataclass(frozen=True)
class AttackResult:
    """How well one attack separates members from non-members."""

    attack: str
    auc: float
    tpr_at_1pct_fpr: float
    advantage: float  # max over thresholds of TPR - FPR
    members: int
    non_members: int

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def record_scores(
    model: nn.Module, split: Split, device: torch.device
) -> dict[str, np.ndarray]:
    """Per-record membership scores (higher = more likely a member); stay local."""
    probs = predict_proba(model, split.x, device)
    true = np.clip(probs[np.arange(len(split)), split.y], 1e-12, 1.0)
    return {"loss": np.log(true), "confidence": true}


def score_attack(
    name: str, members: np.ndarray, non_members: np.ndarray
) -> AttackResult:
    """ROC AUC, TPR at 1% FPR and advantage of a score separating the two sets."""
    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("The audit needs both member and non-member records.")
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    scores = np.r_[members, non_members]
    fpr, tpr, _ = roc_curve(labels, scores)
    low = fpr <= 0.01
    return AttackResult(
        attack=name,
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_1pct_fpr=float(tpr[low].max()) if low.any() else 0.0,
        advantage=float(np.max(tpr - fpr)),
        members=len(members),
        non_members=len(non_members),
    )


def audit_model(
    model: nn.Module, members: Split, non_members: Split, device: torch.device
) -> list[AttackResult]:
    """Run the loss and confidence threshold attacks on ``model``."""
    member = record_scores(model, members, device)
    other = record_scores(model, non_members, device)
    return [score_attack(name, member[name], other[name]) for name in member]
