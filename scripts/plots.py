"""Evaluation figures: ROC curve, confusion matrix, reliability diagram (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from models.metrics import confusion  # noqa: E402


def roc_plot(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """ROC curve of class 1 (binary) or one-vs-rest per class (multi-class)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    classes = [1] if probs.shape[1] == 2 else list(range(probs.shape[1]))
    for c in classes:
        positive = y_true == c
        if positive.all() or not positive.any():
            continue  # undefined for a class that is absent or alone
        fpr, tpr, _ = roc_curve(positive.astype(int), probs[:, c])
        label = class_names[c] if len(classes) > 1 else f"{class_names[c]} vs rest"
        ax.plot(fpr, tpr, lw=1.8, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=title or "ROC curve",
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def confusion_plot(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """Confusion matrix with counts (rows: true class, columns: predicted)."""
    matrix = np.asarray(confusion(y_true, probs))
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * n + 3, 1.2 * n + 2.5))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > threshold else "black",
            )
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    return _save(fig, path)


def calibration_plot(
    y_true: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10, title: str = ""
) -> Path:
    """Reliability diagram of the predicted class's probability.

    Bars: observed accuracy per confidence bin; diagonal: perfect calibration;
    the lower panel shows how many records fall in each bin.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    accuracy = np.array(
        [correct[which == b].mean() if counts[b] else np.nan for b in range(bins)]
    )
    centres = (edges[:-1] + edges[1:]) / 2
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    top.bar(
        centres,
        np.nan_to_num(accuracy),
        width=1 / bins,
        edgecolor="black",
        alpha=0.8,
        label="observed accuracy",
    )
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    top.set(ylabel="accuracy", ylim=(0, 1), title=title or "Reliability diagram")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, counts, width=1 / bins, edgecolor="black", color="grey")
    bottom.set(
        xlabel="confidence (probability of the predicted class)",
        ylabel="records",
        xlim=(0, 1),
    )
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
