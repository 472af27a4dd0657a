"""The numpy clinical metrics agree with scikit-learn's definitions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    roc_auc_score,
)

from models.metrics import classification_metrics, confusion


def _probs(rng: np.random.Generator, n: int, k: int, ties: bool) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    if ties:  # few distinct scores: many tied ranks
        logits = np.round(logits)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _sklearn(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    labels = np.arange(k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "loss": log_loss(y, np.clip(probs, 1e-12, 1.0), labels=labels),
            "accuracy": accuracy_score(y, pred),
            "balanced_accuracy": balanced_accuracy_score(y, pred),
        }
    present = np.unique(y)
    if len(present) < 2 or (k > 2 and len(present) < k):
        out["auc"] = math.nan
    elif k == 2:
        out["auc"] = roc_auc_score(y, probs[:, 1])
    else:
        out["auc"] = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    if k == 2:
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        out["sensitivity"] = tp / (tp + fn) if tp + fn else math.nan
        out["specificity"] = tn / (tn + fp) if tn + fp else math.nan
    return out


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_scikit_learn(k: int, ties: bool) -> None:
    rng = np.random.default_rng(k * 10 + ties)
    for n in (1, 2, 7, 40, 300):
        for skew in (0.0, 0.9):  # skewed labels: classes go missing in small n
            weights = np.full(k, (1 - skew) / k)
            weights[0] += skew
            y = rng.choice(k, size=n, p=weights)
            probs = _probs(rng, n, k, ties)
            ours = classification_metrics(y, probs)
            theirs = _sklearn(y, probs)
            assert ours.keys() == theirs.keys()
            for key, value in theirs.items():
                assert ours[key] == pytest.approx(value, rel=1e-9, nan_ok=True), (
                    key,
                    n,
                    skew,
                )
            expected = confusion_matrix(y, probs.argmax(1), labels=np.arange(k))
            assert confusion(y, probs) == expected.tolist()


def test_metrics_refuse_labels_outside_the_classes_and_empty_splits() -> None:
    probs = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="0..1"):
        classification_metrics(np.array([0, 1, 2]), probs)
    with pytest.raises(ValueError, match="no records"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 2)))
