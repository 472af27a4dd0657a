"""Decision threshold and temperature from binned validation scores (models/decision.py)
and the run-config rules around them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from app.client.decision import (
    NEGATIVES,
    NLL,
    POSITIVES,
    WANT_TEMPERATURE,
    WANT_THRESHOLD,
    WEIGHT,
    decision_metrics,
)
from app.config import ConfigError, RunConfig
from app.server.decision import resolved_rule
from data.spec import Split
from models.decision import (
    BINS,
    TEMPERATURES,
    Decision,
    bin_edges,
    calibrate,
    choose,
    decide,
    histogram_metrics,
    score_histograms,
    temperature_nll,
    threshold_metrics,
)
from scripts.harness.inprocess import full_run_config


def _binary(n: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z / scale); probabilities sigmoid(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z / scale))).astype(int)
    p1 = 1.0 / (1.0 + np.exp(-z))
    return y, np.stack([1.0 - p1, p1], axis=1)


def _youden(y: np.ndarray, p1: np.ndarray, t: float) -> float:
    called = p1 >= t
    return called[y == 1].mean() - called[y == 0].mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_from_histograms_matches_sklearn_within_a_bin(seed):
    y, probs = _binary(400, seed)
    hist = score_histograms(y, probs)
    assert hist.shape == (2, BINS) and hist.sum(axis=1).tolist() == [
        int((y == 0).sum()),
        int((y == 1).sum()),
    ]
    fpr, tpr, thresholds = roc_curve(y, probs[:, 1])
    best = float((tpr - fpr).max())
    chosen = decide(y, probs, rule="youden").threshold
    # binning can merge at most the records of one bin at the optimum
    assert _youden(y, probs[:, 1], chosen) >= best - 2.0 / min(np.bincount(y))
    # ... and lies between sklearn's optimum and the score below it, give or
    # take one bin (in logit)
    opt = thresholds[int(np.argmax(tpr - fpr))]
    below = np.sort(probs[:, 1])[np.searchsorted(np.sort(probs[:, 1]), opt) - 1]
    inner = bin_edges()[1:-1]
    width = float(np.diff(np.log(inner / (1 - inner)))[0])
    logit = np.log(
        np.array([chosen, below, opt]) / (1 - np.array([chosen, below, opt]))
    )
    assert logit[1] - width - 1e-9 <= logit[0] <= logit[2] + width + 1e-9


def test_separable_scores_put_the_threshold_between_the_classes():
    y = np.array([0] * 5 + [1] * 5)
    p1 = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.8, 0.85, 0.9, 0.95, 0.97])
    d = decide(y, np.stack([1 - p1, p1], 1), rule="youden")
    assert 0.25 < d.threshold < 0.8
    assert d.rule == "youden" and d.records == 10 and d.temperature is None


def test_sensitivity_rule_takes_the_highest_threshold_reaching_the_target():
    y, probs = _binary(1000, 3)
    d = decide(y, probs, rule="sensitivity", target_sensitivity=0.9)
    sens = threshold_metrics(y, probs, d.threshold)["sensitivity"]
    assert sens >= 0.9
    next_edge = bin_edges()[np.searchsorted(bin_edges(), d.threshold) + 1]
    assert threshold_metrics(y, probs, next_edge)["sensitivity"] < 0.9 + 1e-3
    assert d.target_sensitivity == 0.9


def test_temperature_recovers_the_scale_the_labels_were_drawn_at():
    y, probs = _binary(5000, 4, scale=2.0)  # overconfident scores: T ~ 2
    nll = temperature_nll(y, probs)
    t = choose(None, nll, rule="none", target_sensitivity=0.9, records=len(y))
    assert t.threshold is None and 1.7 < t.temperature < 2.4
    direct = [
        -np.log(calibrate(probs, s)[np.arange(len(y)), y]).sum()
        for s in (1.0, t.temperature)
    ]
    assert direct[1] < direct[0]
    assert np.isclose(nll[np.argmin(abs(TEMPERATURES - 1.0))], direct[0], rtol=1e-2)


def test_summed_histograms_equal_the_pooled_ones_and_threshold_is_calibrated():
    y, probs = _binary(600, 5, scale=1.5)
    parts = [slice(0, 100), slice(100, 350), slice(350, 600)]
    hist = sum(score_histograms(y[s], probs[s]) for s in parts)
    nll = sum(temperature_nll(y[s], probs[s]) for s in parts)
    assert (hist == score_histograms(y, probs)).all()
    d = choose(hist, nll, rule="youden", target_sensitivity=0.9, records=600)
    pooled = decide(y, probs, rule="youden", temperature=True)
    assert d == pooled
    # the stored threshold on calibrated scores decides as the raw one on raw scores
    raw = d.raw_threshold()
    assert (d.apply(probs)[:, 1] >= d.threshold).tolist() == (
        probs[:, 1] >= raw
    ).tolist()
    at = threshold_metrics(y, d.apply(probs), d.threshold)
    binned = histogram_metrics(hist, raw)
    assert binned["sensitivity"] == pytest.approx(at["sensitivity"], abs=0.01)
    assert Decision.from_dict(d.to_dict()) == d


def test_one_class_only_gives_no_threshold():
    y = np.zeros(20, dtype=int)
    probs = np.full((20, 2), 0.5)
    assert decide(y, probs, rule="youden").threshold is None


def _cfg(**overrides):
    return RunConfig.from_run_config(full_run_config(**overrides))


def test_auto_is_youden_only_for_a_plain_binary_classification_run():
    assert resolved_rule(_cfg(), 2) == "youden"
    assert resolved_rule(_cfg(), 3) == "none"
    assert resolved_rule(_cfg(**{"secure-aggregation": True}), 2) == "none"
    with pytest.raises(ConfigError, match="'threshold-rule'.*3 classes"):
        resolved_rule(_cfg(**{"threshold-rule": "youden"}), 3)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            {"threshold-rule": "youden", "secure-aggregation": True},
            "secure-aggregation",
        ),
        (
            {"calibration": "temperature", "dp": "central", "dp-noise-multiplier": 1.0},
            "'dp'",
        ),
        ({"threshold-rule": "sensitivity", "task": "vertical"}, "'task'"),
        ({"target-sensitivity": 0.8}, "target-sensitivity"),
    ],
)
def test_refused_combinations_name_the_keys(overrides, named):
    with pytest.raises(ConfigError, match=named):
        _cfg(**overrides)


def test_a_hospital_sends_fixed_length_counts_or_nothing():
    y, probs = _binary(30, 6)
    val = Split(np.zeros((30, 3)), y)
    asked = {WANT_THRESHOLD: True, WANT_TEMPERATURE: True}
    sent = decision_metrics(val, probs, asked, min_records=0)
    assert sorted(sent) == sorted([WEIGHT, NEGATIVES, POSITIVES, NLL])
    assert (len(sent[NEGATIVES]), len(sent[POSITIVES])) == (BINS, BINS)
    assert len(sent[NLL]) == len(TEMPERATURES)
    assert sum(sent[NEGATIVES]) + sum(sent[POSITIVES]) == sent[WEIGHT] == 30
    only = decision_metrics(val, probs, {WANT_THRESHOLD: True}, min_records=0)
    assert NLL not in only
    assert decision_metrics(val, probs, asked, min_records=31) == {WEIGHT: 0}
    assert decision_metrics(
        Split(np.zeros((0, 3)), y[:0]), None, asked, min_records=0
    ) == {WEIGHT: 0}


def test_temperature_applies_to_more_than_two_classes():
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 3.0, (300, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in calibrate(probs, 3.0)])
    d = decide(y, probs, rule="none", temperature=True)
    assert d.threshold is None and d.rule == "none" and 2.0 < d.temperature < 4.5
    assert np.allclose(d.apply(probs).sum(axis=1), 1.0)
    assert (d.apply(probs).argmax(axis=1) == probs.argmax(axis=1)).all()
