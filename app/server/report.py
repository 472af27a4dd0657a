"""A run's report: ``report.html`` (self-contained) and its PNG plots, from history.

``write_report(history, out_dir)`` is a pure function of the run's history (plus
optional extras): it draws the plots, saves them beside the HTML and embeds them
as base64 data URIs, so the one file opens anywhere. ``roc_curves`` computes the
final ROC curve points the ServerApp stores in the history.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

REPORT_NAME = "report.html"
EPSILON_KEY = "dp-epsilon"
LABEL_COUNT_PREFIX = "label-count-"
# Server metrics drawn on the [0, 1] panel (loss gets its own panel).
SCORE_METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")
# Per-hospital panels: (phase, metric key, title).
HOSPITAL_PANELS = (
    ("evaluate", "accuracy", "global model accuracy (hospital's held-out split)"),
    ("evaluate", "auc", "global model ROC AUC (hospital's held-out split)"),
    ("evaluate", "loss", "global model loss (hospital's held-out split)"),
    ("train", "train_loss", "local training loss"),
)
MAX_ROC_POINTS = 400


@dataclass(frozen=True)
class Plot:
    """One figure of the report."""

    name: str  # file stem, e.g. "server-metrics"
    title: str
    caption: str
    png: bytes


# ---------------------------------------------------------------- ROC curve


def roc_curves(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """ROC curve points of predicted probabilities against true labels.

    Two classes: one curve, class 1 (the disease) as positive. More classes: one
    one-vs-rest curve per class present with both outcomes. Curves are thinned to
    at most ``MAX_ROC_POINTS`` points (first and last kept). Returns ``[]`` when
    the labels hold a single class (the curve is undefined).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(
            f"probs must be (n, classes) for n={len(y_true)}, got {probs.shape}."
        )
    num_classes = probs.shape[1]
    positives = [1] if num_classes == 2 else list(range(num_classes))
    curves = []
    for k in positives:
        is_pos = (y_true == k).astype(np.int64)
        n_pos = int(is_pos.sum())
        if n_pos == 0 or n_pos == len(is_pos):
            continue
        fpr, tpr, _ = roc_curve(is_pos, probs[:, k])
        if len(fpr) > MAX_ROC_POINTS:
            picks = np.linspace(0, len(fpr) - 1, MAX_ROC_POINTS).round().astype(int)
            keep = np.unique(picks)
            fpr, tpr = fpr[keep], tpr[keep]
        name = class_names[k] if k < len(class_names) else f"class {k}"
        label = name if num_classes == 2 else f"{name} vs rest"
        curves.append(
            {
                "label": label,
                "fpr": [float(v) for v in fpr],
                "tpr": [float(v) for v in tpr],
                "auc": float(roc_auc_score(is_pos, probs[:, k])),
                "positives": n_pos,
                "negatives": int(len(is_pos) - n_pos),
            }
        )
    return curves


# ---------------------------------------------------------- history access


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


Series = dict[str, tuple[list[int], list[float]]]


def server_series(history: Mapping[str, Any]) -> Series:
    """Metric -> (rounds, values) of the server-side evaluation."""
    series: Series = {}
    for entry in history.get("rounds", []):
        for key, value in (entry.get("server") or {}).items():
            if _finite(value):
                rounds, values = series.setdefault(key, ([], []))
                rounds.append(int(entry["round"]))
                values.append(float(value))
    return series


def hospital_series(history: Mapping[str, Any], phase: str, key: str) -> Series:
    """Hospital -> (rounds, values) of one metric in one phase (train/evaluate)."""
    series: Series = {}
    for entry in history.get("rounds", []):
        for name, phases in (entry.get("hospitals") or {}).items():
            value = (phases.get(phase) or {}).get(key)
            if _finite(value):
                rounds, values = series.setdefault(name, ([], []))
                rounds.append(int(entry["round"]))
                values.append(float(value))
    return series


def label_distribution(history: Mapping[str, Any]) -> dict[str, dict[int, int]]:
    """Hospital -> {class: training records}, from its latest train reply."""
    out: dict[str, dict[int, int]] = {}
    for entry in history.get("rounds", []):
        for name, phases in (entry.get("hospitals") or {}).items():
            counts = {
                int(k.removeprefix(LABEL_COUNT_PREFIX)): int(v)
                for k, v in (phases.get("train") or {}).items()
                if k.startswith(LABEL_COUNT_PREFIX) and _finite(v)
            }
            if counts:
                out[name] = counts
    return out


def problems(history: Mapping[str, Any]) -> list[tuple[int, str, str, str]]:
    """(round, hospital, kind, reason) of every rejected reply or error."""
    rows = []
    for entry in history.get("rounds", []):
        for kind in ("rejected", "errors"):
            for name, info in (entry.get(kind) or {}).items():
                if not isinstance(info, Mapping):
                    rows.append((int(entry["round"]), name, kind, str(info)))
                    continue
                for problem in (info, *info.get("more", ())):
                    reason = f"{problem.get('phase', '')}: {problem.get('reason', '')}"
                    rows.append((int(entry["round"]), name, kind, reason))
        if entry.get("failed"):
            rows.append((int(entry["round"]), "-", "failed", str(entry["failed"])))
    return rows


# ------------------------------------------------------------------ plots


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _line_axes(ax: Any, series: Series, title: str) -> None:
    for label, (rounds, values) in sorted(series.items()):
        ax.plot(rounds, values, marker="o", markersize=3, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes
        )


def plot_server(history: Mapping[str, Any]) -> Plot | None:
    series = server_series(history)
    if not series:
        return None
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    _line_axes(left, {k: series[k] for k in SCORE_METRICS if k in series}, "scores")
    left.set_ylim(-0.02, 1.02)
    loss = {k: v for k, v in series.items() if k == "loss"}
    _line_axes(right, loss, "loss (cross-entropy)")
    return Plot(
        "server-metrics",
        "Server metrics per round",
        "The global model on the server's held-out test set; round 0 is the "
        "initial model.",
        _png(fig),
    )


def plot_hospitals(history: Mapping[str, Any]) -> Plot | None:
    panels = [
        (title, hospital_series(history, phase, key))
        for phase, key, title in HOSPITAL_PANELS
    ]
    if not any(series for _, series in panels):
        return None
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    for ax, (title, series) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        _line_axes(ax, series, title)
    return Plot(
        "hospital-metrics",
        "Per-hospital metrics per round",
        "Each line is one hospital (aggregate metrics it reported).",
        _png(fig),
    )


def plot_epsilon(history: Mapping[str, Any]) -> Plot | None:
    series = hospital_series(history, "train", EPSILON_KEY)
    if not series:
        return None
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    _line_axes(ax, series, "privacy budget spent (epsilon) per hospital")
    ax.set_ylabel("epsilon")
    return Plot(
        "dp-epsilon",
        "Differential privacy: epsilon per hospital per round",
        "Cumulative epsilon each hospital's accountant reported after the round.",
        _png(fig),
    )


def plot_labels(
    counts: Mapping[str, Mapping[int, int]], class_names: Sequence[str] = ()
) -> Plot | None:
    if not counts:
        return None
    names = sorted(counts)
    classes = sorted({k for c in counts.values() for k in c})
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 3), 4), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(names))
    for k in classes:
        values = np.array([counts[n].get(k, 0) for n in names], dtype=float)
        label = class_names[k] if k < len(class_names) else f"class {k}"
        ax.bar(names, values, bottom=bottom, label=label)
        bottom += values
    ax.set_ylabel("training records")
    ax.set_title("label distribution per hospital", fontsize=10)
    ax.legend(fontsize=8)
    if len(names) > 8:
        ax.tick_params(axis="x", labelrotation=90)
    return Plot(
        "label-distribution",
        "Label distribution per hospital",
        "Training records per class, as each hospital reported (counts only).",
        _png(fig),
    )


def plot_roc(curves: Sequence[Mapping[str, Any]]) -> Plot | None:
    if not curves:
        return None
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for c in curves:
        ax.plot(c["fpr"], c["tpr"], label=f"{c['label']} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    n = curves[0]["positives"] + curves[0]["negatives"]
    return Plot(
        "roc",
        "Final ROC curve",
        f"The final global model on the server's held-out test set ({n} records).",
        _png(fig),
    )


# ------------------------------------------------------------------- HTML

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}
.bad{color:#a00}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.4f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(plot: Plot, src: str) -> str:
    return (
        f'<figure id="{plot.name}"><img alt="{html.escape(plot.title)}" src="{src}">'
        f'<figcaption class="note">{html.escape(plot.caption)}</figcaption></figure>'
    )


def _server_table(history: Mapping[str, Any]) -> str:
    series = server_series(history)
    keys = [k for k in (*SCORE_METRICS, "loss") if k in series]
    rounds = sorted({r for rs, _ in series.values() for r in rs})
    lookup = {k: dict(zip(*series[k], strict=True)) for k in keys}
    elapsed = {int(e["round"]): e.get("elapsed_s") for e in history.get("rounds", [])}
    rows = [
        [
            r,
            *(lookup[k].get(r, math.nan) for k in keys),
            float(elapsed[r]) if _finite(elapsed.get(r)) else math.nan,
        ]
        for r in rounds
    ]
    return _table(["round", *keys, "elapsed s"], rows)


def _hospital_table(history: Mapping[str, Any]) -> str:
    rounds = history.get("rounds", [])
    last = next((e for e in reversed(rounds) if e.get("hospitals")), None)
    if last is None:
        return '<p class="note">No hospital reported metrics.</p>'
    cols = [
        ("train", "num-examples"),
        ("train", "train_loss"),
        ("evaluate", "accuracy"),
        ("evaluate", "auc"),
        ("evaluate", "sensitivity"),
        ("evaluate", "specificity"),
        ("train", EPSILON_KEY),
    ]
    present = [
        (p, k)
        for p, k in cols
        if any(k in (h.get(p) or {}) for h in last["hospitals"].values())
    ]
    rows = []
    for name, phases in sorted(last["hospitals"].items()):
        row: list[Any] = [name]
        for phase, key in present:
            v = (phases.get(phase) or {}).get(key)
            row.append(float(v) if _finite(v) else math.nan)
        rows.append(row)
    header = ["hospital", *(k if p == "train" else f"eval {k}" for p, k in present)]
    return f"<p>Round {last['round']}:</p>" + _table(header, rows)


def render_html(
    history: Mapping[str, Any],
    plots: Sequence[Plot],
    *,
    images: Mapping[str, str],
    run_config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] = (),
) -> str:
    """Render the report page; ``images`` maps each plot name to its ``src``."""
    by_name = {p.name: p for p in plots}
    name = str(history.get("run_name", "run"))
    status = str(history.get("status", "unknown"))
    final = history.get("final_server_metrics") or {}
    facts = [
        ("status", status),
        ("task", history.get("task", "")),
        ("dataset", history.get("dataset", "")),
        ("strategy", history.get("strategy", "")),
        ("model", history.get("model", "")),
        (
            "rounds",
            f"{len([r for r in history.get('rounds', []) if r['round'] > 0])}"
            f" of {history.get('num_rounds', '?')}",
        ),
    ]
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>medflower report: {html.escape(name)}</title><style>{STYLE}</style>",
        "</head><body>",
        f"<h1>medflower run report: {html.escape(name)}</h1>",
        _table(["", ""], facts),
    ]
    if final:
        keys = [k for k in (*SCORE_METRICS, "loss") if _finite(final.get(k))]
        parts.append("<p>Final server-side metrics:</p>")
        parts.append(_table(keys, [[float(final[k]) for k in keys]]))

    def section(
        sid: str, title: str, plot_name: str | None, empty: str, extra: str = ""
    ) -> None:
        parts.append(f'<h2 id="{sid}">{html.escape(title)}</h2>')
        plot = by_name.get(plot_name) if plot_name else None
        if plot is not None:
            parts.append(_figure(plot, images[plot.name]))
        elif empty:
            parts.append(f'<p class="note">{html.escape(empty)}</p>')
        parts.append(extra)

    section(
        "server",
        "Server metrics per round",
        "server-metrics",
        "No server-side evaluation (server-eval = false).",
        _server_table(history),
    )
    section(
        "hospitals",
        "Per-hospital metrics per round",
        "hospital-metrics",
        "No per-hospital metrics were reported.",
        _hospital_table(history),
    )
    if EPSILON_KEY in json.dumps(history.get("rounds", [])):
        section("privacy", "Differential privacy", "dp-epsilon", "")
    else:
        section(
            "privacy",
            "Differential privacy",
            None,
            "No hospital reported a privacy budget (DP off).",
        )
    counts = label_distribution(history)
    count_rows = [
        [n, *(c.get(k, 0) for k in sorted({k for v in counts.values() for k in v}))]
        for n, c in sorted(counts.items())
    ]
    classes = sorted({k for v in counts.values() for k in v})
    count_header = [
        "hospital",
        *(class_names[k] if k < len(class_names) else f"class {k}" for k in classes),
    ]
    section(
        "labels",
        "Label distribution per hospital",
        "label-distribution",
        "No hospital reported label counts.",
        _table(count_header, count_rows) if counts else "",
    )
    curves = history.get("roc") or []
    roc_table = (
        _table(
            ["curve", "AUC", "positives", "negatives"],
            [
                [c["label"], float(c["auc"]), c["positives"], c["negatives"]]
                for c in curves
            ],
        )
        if curves
        else ""
    )
    section(
        "roc",
        "Final ROC curve",
        "roc",
        "No ROC curve: no server-side test set, or it holds a single class.",
        roc_table,
    )
    issues = problems(history)
    parts.append('<h2 id="problems">Dropped replies and errors</h2>')
    parts.append(
        _table(["round", "hospital", "kind", "reason"], issues)
        if issues
        else '<p class="note">None: every sampled hospital replied soundly.</p>'
    )
    if run_config:
        parts.append('<h2 id="config">Run configuration</h2>')
        parts.append(_table(["key", "value"], sorted(run_config.items())))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_plots(
    history: Mapping[str, Any], class_names: Sequence[str] = ()
) -> list[Plot]:
    """Every plot the history supports (plots without data are left out)."""
    plots = [
        plot_server(history),
        plot_hospitals(history),
        plot_epsilon(history),
        plot_labels(label_distribution(history), class_names),
        plot_roc(history.get("roc") or []),
    ]
    return [p for p in plots if p is not None]


def write_report(
    history: Mapping[str, Any],
    out_dir: Path,
    *,
    run_config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and ``report-<plot>.png``; return the HTML path.

    ``class_names`` defaults to ``history["class_names"]`` when present.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(
        class_names if class_names is not None else history.get("class_names") or ()
    )
    plots = build_plots(history, names)
    images = {}
    for plot in plots:
        (out_dir / f"report-{plot.name}.png").write_bytes(plot.png)
        images[plot.name] = (
            "data:image/png;base64," + base64.b64encode(plot.png).decode()
        )
    page = render_html(
        history, plots, images=images, run_config=run_config, class_names=names
    )
    path = out_dir / REPORT_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
