"""After the last round: the final model's decision threshold and temperature.

The ServerApp sends the final model once more to every connected hospital
(``query.decision_stats``). Each answers with aggregates of its validation split
only: the counts of its negative and positive records in fixed score bins and,
for ``calibration = "temperature"``, its NLL summed over a fixed temperature grid
(:mod:`models.decision`), with its record count. The server sums them, which
gives exactly the pooled validation histograms, and picks the threshold and
temperature stored in ``final_model.pt``. A hospital that fails, holds no
validation records or fewer than its ``min-records`` contributes nothing; no
failure here fails the run (the model is then saved without a decision).

Why only without DP and secure aggregation: the histograms are exact counts
(no noise, no masking). With 1000 bins and a small validation split they are
close to the multiset of that split's rounded scores per class (no order, no
identifier), which local DP, central DP and secure aggregation would not
account for; ``threshold-rule = "auto"`` is then ``none`` and an explicit rule
is refused (app/config/checks.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from app.client.decision import (
    NEGATIVES,
    NLL,
    POSITIVES,
    QUERY,
    WANT_TEMPERATURE,
    WANT_THRESHOLD,
    WEIGHT,
)
from app.config import ConfigError, RunConfig
from app.server.history import DecisionEntry
from app.server.queries import ask_hospitals
from models.decision import (
    BINS,
    TEMPERATURES,
    Decision,
    choose,
    histogram_metrics,
)
from strategies.encoding import encode
from strategies.sampling import FederationStopped

log = logging.getLogger(__name__)

CLASSIFICATION_TASKS = ("tabular", "imaging")


def resolved_rule(cfg: RunConfig, num_classes: int) -> str:
    """``threshold-rule`` with ``auto`` resolved; explicit rules need two classes.

    Raises
    ------
    ConfigError
        An explicit rule on a task with other than two classes.
    """
    rule = cfg.threshold_rule
    if rule == "auto":
        binary = cfg.task in CLASSIFICATION_TASKS and num_classes == 2
        plain = cfg.dp == "none" and not cfg.secure_aggregation
        return "youden" if binary and plain and cfg.mode == "train" else "none"
    if rule != "none" and num_classes != 2:
        raise ConfigError(
            f"'threshold-rule' = {rule!r} picks a threshold on the positive class "
            f"of a binary task; this data has {num_classes} classes (use "
            "threshold-rule='none' or 'auto')."
        )
    return rule


def query_config(
    rule: str, temperature: bool, contract: Mapping[str, Any]
) -> dict[str, Any]:
    """What the query asks: the task contract and which aggregates to send."""
    return {**contract, WANT_THRESHOLD: rule != "none", WANT_TEMPERATURE: temperature}


def _summed(
    replies: Mapping[str, RecordDict], left_out: dict[str, str]
) -> tuple[np.ndarray | None, np.ndarray | None, int, list[str]]:
    """Sum the well-formed replies; the others go to ``left_out`` with a reason."""
    hist = np.zeros((2, BINS), dtype=np.int64)
    nll = np.zeros(len(TEMPERATURES))
    seen_hist = seen_nll = False
    records, used = 0, []
    for name, content in sorted(replies.items()):
        metrics = content.metric_records.get("metrics", {})
        n = int(metrics.get(WEIGHT, 0))
        if n <= 0:
            left_out[name] = "no validation records sent (none, or below min-records)"
            continue
        neg, pos = metrics.get(NEGATIVES), metrics.get(POSITIVES)
        sums = metrics.get(NLL)
        if (neg is not None and (len(neg) != BINS or len(pos or ()) != BINS)) or (
            sums is not None and len(sums) != len(TEMPERATURES)
        ):
            left_out[name] = "malformed reply"
            continue
        if neg is not None:
            hist += np.array([neg, pos], dtype=np.int64)
            seen_hist = True
        if sums is not None:
            nll += np.asarray(sums, dtype=np.float64)
            seen_nll = True
        records += n
        used.append(name)
    return hist if seen_hist else None, nll if seen_nll else None, records, used


def choose_decision(
    grid: Any,
    cfg: RunConfig,
    arrays: ArrayRecord,
    *,
    contract: Mapping[str, Any],
    num_classes: int,
) -> DecisionEntry | None:
    """Ask the hospitals about ``arrays`` and choose; None when nothing is asked.

    Never raises for the hospitals' sake: too few connected hospitals or no
    usable reply give a ``none`` decision (argmax), logged.
    """
    rule = resolved_rule(cfg, num_classes)
    temperature = cfg.calibration == "temperature"
    if rule == "none" and not temperature:
        return None
    try:
        asked = ask_hospitals(
            grid,
            cfg,
            f"query.{QUERY}",
            query_config(rule, temperature, contract),
            "decision",
            arrays=encode(arrays, cfg.update_encoding),
        )
    except FederationStopped as stop:
        log.warning("No decision threshold: %s", stop)
        return DecisionEntry(rule="none", records=0, left_out={"all": str(stop)})
    left_out = dict(asked.failed)
    hist, nll, records, used = _summed(asked.replies, left_out)
    decision = choose(
        hist,
        nll,
        rule=rule,
        target_sensitivity=cfg.target_sensitivity,
        records=records,
    )
    raw = decision.raw_threshold()
    entry = DecisionEntry(
        **decision.to_dict(),
        hospitals=used,
        left_out=left_out or None,
        validation=(
            None if raw is None or hist is None else histogram_metrics(hist, raw)
        ),
    )
    _log(entry, rule)
    return entry


def stored(entry: DecisionEntry | None) -> Decision | None:
    """The part of the history's entry ``final_model.pt`` keeps."""
    if entry is None:
        return None
    return Decision(
        rule=entry.rule,
        threshold=entry.threshold,
        temperature=entry.temperature,
        target_sensitivity=entry.target_sensitivity,
        records=entry.records,
    )


def _log(entry: DecisionEntry, asked: str) -> None:
    if entry.threshold is None and asked != "none":
        log.warning(
            "threshold-rule='%s': no threshold chosen (%d validation records from "
            "%d hospitals, both classes needed); the model decides by argmax.",
            asked,
            entry.records,
            len(entry.hospitals),
        )
    log.info(
        "Decision on %d validation records from %d hospitals: rule %s, threshold "
        "%s, temperature %s%s",
        entry.records,
        len(entry.hospitals),
        entry.rule,
        "-" if entry.threshold is None else f"{entry.threshold:.4f}",
        "-" if entry.temperature is None else f"{entry.temperature:.3f}",
        f" (left out: {', '.join(entry.left_out)})" if entry.left_out else "",
    )
