"""A decision threshold and a temperature chosen from aggregate validation numbers.

The server never sees a validation score: each hospital sends, for the final
model, the counts of its validation records per class in fixed score bins
(:func:`score_histograms`) and its NLL summed over a fixed grid of temperatures
(:func:`temperature_nll`). Summed over hospitals they are exactly the histograms
and NLL sums of the pooled validation records, from which :func:`choose` picks

- the threshold on the positive class's probability (class 1, the disease):
  Youden's J = sensitivity + specificity - 1 at its maximum, or the highest
  threshold whose sensitivity reaches a target (Youden, Cancer 1950; the ROC
  from binned scores, Fawcett, Pattern Recogn. Lett. 2006);
- the temperature T minimising the NLL of ``softmax(log p / T)``, i.e. of the
  logits divided by T (temperature scaling, Guo et al., ICML 2017).

The bins are equal in logit (``BINS`` bins, their inner edges at
``sigmoid(linspace(-LOGIT_RANGE, LOGIT_RANGE))``: 0.018 logits wide), so a
threshold near 0 or 1 is resolved as finely as one near 0.5. The centralised
baselines call the same functions on pooled records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BINS = 1000
LOGIT_RANGE = 9.0
# 121 temperatures, 5% apart, 0.05 .. 20
TEMPERATURES = np.geomspace(0.05, 20.0, 121)
RULES = ("youden", "sensitivity", "none")
_TINY = 1e-12


def bin_edges(bins: int = BINS) -> np.ndarray:
    """The ``bins + 1`` edges in probability: 0, the logit-spaced inner ones, 1."""
    inner = 1.0 / (1.0 + np.exp(-np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins - 1)))
    return np.concatenate([[0.0], inner, [1.0]])


def calibrate(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """``softmax(log(probs) / temperature)``: the logits scaled by 1/T.

    ``None`` or 1 leaves ``probs`` as they are. For two classes the positive
    class's probability becomes ``sigmoid(logit(p) / T)``, monotone in ``p``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if temperature is None or temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def score_histograms(
    y_true: np.ndarray, probs: np.ndarray, bins: int = BINS
) -> np.ndarray:
    """Counts of class-0 and class-1 records per bin of the class-1 probability.

    Returns a ``(2, bins)`` integer array; bin ``j`` holds the scores ``s`` with
    ``edges[j] <= s < edges[j + 1]`` (a score of exactly 1 in the last bin).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(probs, dtype=np.float64)[:, 1]
    which = np.searchsorted(bin_edges(bins), scores, side="right") - 1
    which = np.clip(which, 0, bins - 1)
    out = np.zeros((2, bins), dtype=np.int64)
    for label in (0, 1):
        out[label] = np.bincount(which[y_true == label], minlength=bins)
    return out


def temperature_nll(
    y_true: np.ndarray, probs: np.ndarray, temperatures: np.ndarray = TEMPERATURES
) -> np.ndarray:
    """The NLL of ``calibrate(probs, T)`` summed over the records, for each T."""
    y_true = np.asarray(y_true, dtype=np.int64)
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, 1.0))
    out = np.empty(len(temperatures))
    for i, t in enumerate(temperatures):
        scaled = logp / t
        top = scaled.max(axis=1)
        norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        out[i] = float((norm - scaled[np.arange(len(y_true)), y_true]).sum())
    return out


def roc_from_histograms(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (the inner bin edges), sensitivity and 1 - specificity at each.

    A record is called positive when its score is at or above the threshold.
    """
    hist = np.asarray(hist, dtype=np.float64)
    negatives, positives = hist.sum(axis=1)
    # records at or above edge k: bins k .. end
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
    edges = bin_edges(hist.shape[1])
    thresholds = edges[1:-1]
    tpr = above[1, 1:] / positives
    fpr = above[0, 1:] / negatives
    return thresholds, tpr, fpr


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def youden_threshold(hist: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1.

    Equal J over a run of empty bins: the middle of the run (in logit), so the
    threshold sits between the two groups of records rather than on one.
    """
    thresholds, tpr, fpr = roc_from_histograms(hist)
    j = tpr - fpr
    best = int(np.argmax(j))
    last = best
    while last + 1 < len(j) and j[last + 1] == j[best]:
        last += 1
    mid = (_logit(thresholds[best]) + _logit(thresholds[last])) / 2.0
    return float(1.0 / (1.0 + math.exp(-mid)))


def sensitivity_threshold(hist: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target``."""
    thresholds, tpr, _ = roc_from_histograms(hist)
    reaching = np.flatnonzero(tpr >= target - 1e-12)
    return float(thresholds[reaching[-1]] if len(reaching) else thresholds[0])


def pick_temperature(
    nll_sums: np.ndarray, temperatures: np.ndarray = TEMPERATURES
) -> float:
    """The grid temperature with the lowest summed NLL."""
    return float(temperatures[int(np.argmin(nll_sums))])


@dataclass(frozen=True)
class Decision:
    """What ``final_model.pt`` stores (key ``"decision"``) and evaluation applies.

    ``threshold`` applies to the class-1 probability *after* ``temperature``
    (None: no threshold, argmax / 0.5); ``temperature`` None: no calibration.
    ``records`` is the number of validation records both were chosen on.
    """

    rule: str
    threshold: float | None
    temperature: float | None
    target_sensitivity: float | None
    records: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Decision | None:
        return None if not data else cls(**data)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` with the stored temperature applied."""
        return calibrate(probs, self.temperature)

    def raw_threshold(self) -> float | None:
        """The threshold on the uncalibrated class-1 probability."""
        if self.threshold is None or self.temperature is None:
            return self.threshold
        t = min(max(self.threshold, _TINY), 1.0 - 1e-16)
        return float(1.0 / (1.0 + math.exp(-_logit(t) * self.temperature)))


def choose(
    hist: np.ndarray | None,
    nll_sums: np.ndarray | None,
    *,
    rule: str,
    target_sensitivity: float,
    records: int,
) -> Decision:
    """The decision from summed histograms (``rule``) and NLL sums (calibration).

    ``hist`` None or without both classes: no threshold (argmax); ``nll_sums``
    None: no temperature. The threshold is chosen on the raw scores and stored
    on the calibrated scale (the same decisions: the map is monotone).
    """
    temperature = None if nll_sums is None else pick_temperature(nll_sums)
    threshold = None
    if rule != "none" and hist is not None and np.all(np.sum(hist, axis=1) > 0):
        raw = (
            youden_threshold(hist)
            if rule == "youden"
            else sensitivity_threshold(hist, target_sensitivity)
        )
        threshold = float(calibrate(np.array([[1.0 - raw, raw]]), temperature)[0, 1])
    return Decision(
        rule=rule if threshold is not None else "none",
        threshold=threshold,
        temperature=temperature,
        target_sensitivity=target_sensitivity if rule == "sensitivity" else None,
        records=int(records),
    )


def decide(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    rule: str,
    target_sensitivity: float = 0.9,
    temperature: bool = False,
) -> Decision:
    """:func:`choose` on one set of records (a centralised baseline's pooled ones)."""
    return choose(
        score_histograms(y_true, probs) if rule != "none" else None,
        temperature_nll(y_true, probs) if temperature else None,
        rule=rule,
        target_sensitivity=target_sensitivity,
        records=len(y_true),
    )


def threshold_metrics(
    y_true: np.ndarray, probs: np.ndarray, threshold: float
) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, balanced accuracy of ``p1 >= threshold``.

    Binary only; a class absent from ``y_true`` makes its recall NaN.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(probs, dtype=np.float64)[:, 1] >= threshold
    pos, neg = y_true == 1, y_true == 0
    sens = float(pred[pos].mean()) if pos.any() else math.nan
    spec = float((~pred[neg]).mean()) if neg.any() else math.nan
    return {
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": spec,
        "accuracy": float((pred == pos).mean()) if len(y_true) else math.nan,
        "balanced_accuracy": float(np.nanmean([sens, spec])),
        "predicted_positive": int(pred.sum()),
    }


def histogram_metrics(hist: np.ndarray, threshold_raw: float) -> dict[str, float]:
    """Sensitivity and specificity at a raw-score threshold, from histograms.

    The pooled validation records' figures at the chosen threshold, without any
    record: bins whose lower edge is at or above the threshold count as positive.
    """
    hist = np.asarray(hist, dtype=np.float64)
    edges = bin_edges(hist.shape[1])
    called = edges[:-1] >= threshold_raw - 1e-12
    negatives, positives = hist.sum(axis=1)
    return {
        "sensitivity": float(hist[1, called].sum() / positives)
        if positives
        else math.nan,
        "specificity": float(hist[0, ~called].sum() / negatives)
        if negatives
        else math.nan,
    }
