"""The hospital's side of ``query.decision_stats``: aggregates of its validation split.

For the final model the server asks each hospital for the counts of its
validation records per class in fixed score bins and, for temperature scaling,
its NLL summed over a fixed grid of temperatures (:mod:`models.decision`): fixed
lengths whatever the split's size, and no score, record or identifier. A split
that is empty or smaller than the hospital's own ``min-records`` sends nothing
but a zero count. The server side is :mod:`app.server.decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data.spec import Split
from models.decision import score_histograms, temperature_nll

QUERY = "decision_stats"  # message type ``query.decision_stats``
WANT_THRESHOLD, WANT_TEMPERATURE = "decision-threshold", "decision-temperature"
NEGATIVES, POSITIVES = "decision-negatives", "decision-positives"
NLL = "decision-nll"
WEIGHT = "num-examples"


def decision_metrics(
    val: Split,
    probs: np.ndarray | None,
    config: Mapping[str, Any],
    *,
    min_records: int,
) -> dict[str, Any]:
    """The reply's metrics: ``num-examples`` and the aggregates ``config`` asks for.

    ``probs`` are the final model's class probabilities on the hospital's
    validation split ``val`` (None when it is empty).
    """
    n = len(val)
    if probs is None or n == 0 or n < min_records:
        return {WEIGHT: 0}
    out: dict[str, Any] = {WEIGHT: n}
    if bool(config.get(WANT_THRESHOLD)) and probs.shape[1] == 2:
        hist = score_histograms(val.y, probs)
        out[NEGATIVES] = [int(c) for c in hist[0]]
        out[POSITIVES] = [int(c) for c in hist[1]]
    if bool(config.get(WANT_TEMPERATURE)):
        out[NLL] = [float(v) for v in temperature_nll(val.y, probs)]
    return out
