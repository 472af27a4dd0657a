"""Clinical classification metrics computed from predicted probabilities."""

from __future__ import annotations

import math

import numpy as np

# Computed with numpy, not scikit-learn: every hospital evaluates on every message,
# and scikit-learn's input validation cost ~25 ms per call here (most of a round
# at 100 hospitals). tests/unit/test_metrics.py checks the values against
# scikit-learn's.
_EPS = float(np.finfo(np.float64).eps)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy, ROC AUC, and for two classes sensitivity
    (recall of class 1, the disease) and specificity (recall of class 0).

    The loss is the mean cross-entropy of probabilities clipped to [1e-12, 1].
    Balanced accuracy is the mean recall over the classes present in ``y_true``.
    ROC AUC is NaN when the labels hold a single class (it is undefined there);
    it is one-vs-rest macro-averaged for more than two classes.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(
            f"probs must be (n, classes) for n={len(y_true)}, got {probs.shape}."
        )
    if not len(y_true):
        raise ValueError("Cannot compute metrics of no records.")
    num_classes = probs.shape[1]
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}.")
    pred = probs.argmax(axis=1)
    picked = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0 - _EPS)
    recalls = per_class_recall(y_true, probs)
    out = {
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((pred == y_true).mean()),
        "balanced_accuracy": float(np.nanmean(recalls)),
        "auc": _auc(y_true, probs),
    }
    if num_classes == 2:
        out["sensitivity"], out["specificity"] = recalls[1], recalls[0]
    return out


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (tied scores count one half)."""
    _, where, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[where]  # average ranks, from 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(y_true)
    if len(present) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return _binary_auc(y_true == 1, probs[:, 1])
    if len(present) < probs.shape[1]:
        return math.nan
    return float(
        np.mean([_binary_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])])
    )


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
    cells = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(probs).argmax(
        axis=1
    )
    matrix = np.bincount(cells, minlength=num_classes * num_classes)
    return matrix.reshape(num_classes, num_classes).astype(int).tolist()


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
