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


def per_class_recall(y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """Recall of every class (NaN for a class absent from ``y_true``)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(probs).argmax(axis=1)
    out = []
    for c in range(np.asarray(probs).shape[1]):
        mask = y_true == c
        out.append(float((pred[mask] == c).mean()) if mask.any() else math.nan)
    return out


def confusion(y_true: np.ndarray, probs: np.ndarray) -> list[list[int]]:
    """Confusion matrix counts: rows are true classes, columns predicted ones."""
    num_classes = np.asarray(probs).shape[1]
    matrix = confusion_matrix(
        np.asarray(y_true, dtype=np.int64),
        np.asarray(probs).argmax(axis=1),
        labels=list(range(num_classes)),
    )
    return matrix.astype(int).tolist()


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, bins: int = 10
) -> float:
    """Top-label expected calibration error over ``bins`` equal-width bins.

    The mean, weighted by bin size, of |accuracy - mean confidence| per bin of the
    predicted class's probability (Guo et al., ICML 2017).
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared error between the probability vector and the one-hot label."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(y_true, dtype=np.int64)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: str,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric`` ("auc" or "accuracy").

    Records are resampled with replacement; resamples where the metric is
    undefined (an AUC draw holding one class) are skipped. Returns (NaN, NaN)
    when fewer than half of the resamples give a value.
    """
    functions = {
        "auc": _auc,
        "accuracy": lambda y, p: float((p.argmax(axis=1) == y).mean()),
    }
    fn = functions[metric]
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y_true), len(y_true))
        value = fn(y_true[idx], probs[idx])
        if value == value:
            values.append(value)
    if len(values) < resamples / 2:
        return math.nan, math.nan
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
