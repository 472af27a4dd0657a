"""Clinical classification metrics computed from predicted probabilities."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    roc_auc_score,
)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy, ROC AUC, and for two classes sensitivity
    (recall of class 1, the disease) and specificity (recall of class 0).

    ROC AUC is NaN when the labels hold a single class (it is undefined there);
    it is one-vs-rest macro-averaged for more than two classes.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(
            f"probs must be (n, classes) for n={len(y_true)}, got {probs.shape}."
        )
    num_classes = probs.shape[1]
    labels = np.arange(num_classes)
    pred = probs.argmax(axis=1)
    out = {
        "loss": float(log_loss(y_true, np.clip(probs, 1e-12, 1.0), labels=labels)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, pred),
        "auc": _auc(y_true, probs),
    }
    if num_classes == 2:
        tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else math.nan
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else math.nan
    return out


def _balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    import warnings

    with warnings.catch_warnings():
        # A class absent from y_true is skipped by sklearn with a warning.
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, pred))


def _auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(y_true)
    if len(present) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    if len(present) < probs.shape[1]:
        return math.nan
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
