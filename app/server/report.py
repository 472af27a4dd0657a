"""A run's report: ``report.html`` (self-contained) and its PNG plots, from history.

``write_report(history, out_dir)`` is a pure function of the run's
:class:`~app.server.history.RunHistory` (plus
optional extras): it draws the plots, saves them beside the HTML and embeds them
as base64 data URIs, so the one file opens anywhere. ``roc_curves`` computes the
final ROC curve points the ServerApp stores in the history.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from app.server.history import RocCurve, RunHistory

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
) -> list[RocCurve]:
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
    # scikit-learn (~2 s of imports with SciPy and pandas) at the run's end only,
    # not while the ServerApp starts beside the hospitals' first messages
    from sklearn.metrics import roc_auc_score, roc_curve

    num_classes = probs.shape[1]
    positives = [1] if num_classes == 2 else list(range(num_classes))
    curves: list[RocCurve] = []
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


def _finite(value: Any) -> TypeGuard[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


Series = dict[str, tuple[list[int], list[float]]]


def server_series(history: RunHistory) -> Series:
    """Metric -> (rounds, values) of the server-side evaluation."""
    series: Series = {}
    for entry in history.rounds:
        for key, value in entry.server.items():
            if _finite(value):
                rounds, values = series.setdefault(key, ([], []))
                rounds.append(entry.round)
                values.append(float(value))
    return series


def hospital_series(history: RunHistory, phase: str, key: str) -> Series:
    """Hospital -> (rounds, values) of one metric in one phase (train/evaluate)."""
    series: Series = {}
    for entry in history.rounds:
        for name, phases in (entry.hospitals or {}).items():
            value = (phases.get(phase) or {}).get(key)
            if _finite(value):
                rounds, values = series.setdefault(name, ([], []))
                rounds.append(entry.round)
                values.append(float(value))
    return series


def reports_epsilon(history: RunHistory) -> bool:
    """Whether any hospital reported a privacy budget (local DP)."""
    return any(
        EPSILON_KEY in (phases.get("train") or {})
        for entry in history.rounds
        for phases in (entry.hospitals or {}).values()
    )


def label_distribution(history: RunHistory) -> dict[str, dict[int, int]]:
    """Hospital -> {class: training records}, from its latest train reply."""
    out: dict[str, dict[int, int]] = {}
    for entry in history.rounds:
        for name, phases in (entry.hospitals or {}).items():
            counts = {
                int(k.removeprefix(LABEL_COUNT_PREFIX)): int(v)
                for k, v in (phases.get("train") or {}).items()
                if k.startswith(LABEL_COUNT_PREFIX) and _finite(v)
            }
            if counts:
                out[name] = counts
    return out


def problems(history: RunHistory) -> list[tuple[int, str, str, str]]:
    """(round, hospital, kind, reason) of every skipped round, silent hospital,
    rejected reply or error.
    """
    rows = []
    for entry in history.rounds:
        if entry.skipped is not None:
            rows.append((entry.round, "-", "skipped round", entry.skipped))
        for phase, names in (entry.no_reply or {}).items():
            reason = f"{phase}: no reply within round-timeout"
            rows += [(entry.round, name, "no reply", reason) for name in names]
        for kind, found in (("rejected", entry.rejected), ("errors", entry.errors)):
            for name, info in (found or {}).items():
                if not isinstance(info, Mapping):
                    rows.append((entry.round, name, kind, str(info)))
                    continue
                for problem in (info, *info.get("more", ())):
                    reason = f"{problem.get('phase', '')}: {problem.get('reason', '')}"
                    rows.append((entry.round, name, kind, reason))
    return rows


# ------------------------------------------------------------------ plots


def _new_figure(**options: Any) -> Figure:
    """A matplotlib Figure (matplotlib imported when a report is drawn, not when
    the ServerApp starts).
    """
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **options)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _line_axes(ax: Any, series: Series, title: str) -> None:
    for label, (rounds, values) in sorted(series.items()):
        ax.plot(rounds, values, marker="o", markersize=3, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("round")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes
        )


def plot_server(history: RunHistory) -> Plot | None:
    series = server_series(history)
    if not series:
        return None
    fig = _new_figure(figsize=(11, 4))
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


def plot_hospitals(history: RunHistory) -> Plot | None:
    panels = [
        (title, hospital_series(history, phase, key))
        for phase, key, title in HOSPITAL_PANELS
    ]
    if not any(series for _, series in panels):
        return None
    fig = _new_figure(figsize=(11, 7.5))
    for ax, (title, series) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        _line_axes(ax, series, title)
    return Plot(
        "hospital-metrics",
        "Per-hospital metrics per round",
        "Each line is one hospital (aggregate metrics it reported).",
        _png(fig),
    )


def plot_epsilon(history: RunHistory) -> Plot | None:
    series = hospital_series(history, "train", EPSILON_KEY)
    if not series:
        return None
    fig = _new_figure(figsize=(7, 4))
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
    fig = _new_figure(figsize=(max(6.0, 0.9 * len(names) + 3), 4))
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


def plot_roc(curves: Sequence[RocCurve]) -> Plot | None:
    if not curves:
        return None
    fig = _new_figure(figsize=(5.5, 5))
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


def _server_table(history: RunHistory) -> str:
    series = server_series(history)
    keys = [k for k in (*SCORE_METRICS, "loss") if k in series]
    rounds = sorted({r for rs, _ in series.values() for r in rs})
    lookup = {k: dict(zip(*series[k], strict=True)) for k in keys}
    elapsed = {e.round: e.elapsed_s for e in history.rounds}
    rows = [
        [
            r,
            *(lookup[k].get(r, math.nan) for k in keys),
            float(elapsed[r]) if _finite(elapsed.get(r)) else math.nan,
        ]
        for r in rounds
    ]
    return _table(["round", *keys, "elapsed s"], rows)


# Columns of the per-hospital table: (phase, metric key).
HOSPITAL_COLUMNS = (
    ("train", "num-examples"),
    ("train", "train_loss"),
    ("evaluate", "accuracy"),
    ("evaluate", "auc"),
    ("evaluate", "sensitivity"),
    ("evaluate", "specificity"),
    ("train", EPSILON_KEY),
)


def _hospital_table(history: RunHistory) -> str:
    last = next((e for e in reversed(history.rounds) if e.hospitals), None)
    if last is None or last.hospitals is None:
        return '<p class="note">No hospital reported metrics.</p>'
    present = [
        (p, k)
        for p, k in HOSPITAL_COLUMNS
        if any(k in (h.get(p) or {}) for h in last.hospitals.values())
    ]
    rows = []
    for name, phases in sorted(last.hospitals.items()):
        row: list[Any] = [name]
        for phase, key in present:
            v = (phases.get(phase) or {}).get(key)
            row.append(float(v) if _finite(v) else math.nan)
        rows.append(row)
    header = ["hospital", *(k if p == "train" else f"eval {k}" for p, k in present)]
    return f"<p>Round {last.round}:</p>" + _table(header, rows)


def _label_table(history: RunHistory, class_names: Sequence[str]) -> str:
    counts = label_distribution(history)
    if not counts:
        return ""
    classes = sorted({k for v in counts.values() for k in v})
    header = [
        "hospital",
        *(class_names[k] if k < len(class_names) else f"class {k}" for k in classes),
    ]
    rows = [[n, *(c.get(k, 0) for k in classes)] for n, c in sorted(counts.items())]
    return _table(header, rows)


def _roc_table(curves: Sequence[RocCurve]) -> str:
    if not curves:
        return ""
    rows = [
        [c["label"], float(c["auc"]), c["positives"], c["negatives"]] for c in curves
    ]
    return _table(["curve", "AUC", "positives", "negatives"], rows)


def _contribution_table(history: RunHistory) -> str:
    """Each hospital's leave-one-out influence on the final held-out metric."""
    found = history.contributions or {}
    sites = found.get("sites", {})
    if not sites:
        return ""
    rows = [[n, float(v)] for n, v in sorted(sites.items(), key=lambda kv: -kv[1])]
    return (
        f'<p class="note">Federated held-out {html.escape(str(found["metric"]))} '
        "of the final model minus that of the final round averaged without the "
        "hospital's update.</p>" + _table(["hospital", "contribution"], rows)
    )


def _problems_section(history: RunHistory) -> str:
    issues = problems(history)
    return '<h2 id="problems">Skipped rounds, dropped replies and errors</h2>' + (
        _table(["round", "hospital", "kind", "reason"], issues)
        if issues
        else '<p class="note">None: every round trained and every sampled hospital '
        "replied soundly.</p>"
    )


def _head(history: RunHistory) -> list[str]:
    """Title, the run's facts and its final server-side metrics."""
    name = history.run_name or "run"
    recorded = len([r for r in history.rounds if r.round > 0])
    skipped = len([r for r in history.skipped_rounds() if r.round > 0])
    facts = [
        ("status", history.status),
        ("task", history.task),
        ("dataset", history.dataset),
        ("strategy", history.strategy),
        ("model", history.model),
        ("rounds", f"{recorded} of {history.num_rounds}"),
    ]
    if skipped:
        facts.append(("skipped rounds", f"{skipped} (see below)"))
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>medflower report: {html.escape(name)}</title><style>{STYLE}</style>",
        "</head><body>",
        f"<h1>medflower run report: {html.escape(name)}</h1>",
        _table(["", ""], facts),
    ]
    final = history.final_server_metrics or {}
    if final:
        keys = [k for k in (*SCORE_METRICS, "loss") if _finite(final.get(k))]
        parts.append("<p>Final server-side metrics:</p>")
        parts.append(_table(keys, [[float(final[k]) for k in keys]]))
    parts.append(_decision_table(history))
    return parts


def _decision_table(history: RunHistory) -> str:
    """The stored decision threshold and temperature, and the figures at it."""
    found = history.decision
    if found is None:
        return ""
    rows: list[list[Any]] = [
        ["rule", found.rule],
        ["threshold (class-1 probability)", found.threshold or "none (argmax)"],
        ["temperature", found.temperature or "none"],
        [
            "validation records",
            f"{found.records} from {len(found.hospitals)} hospitals",
        ],
    ]
    for label, metrics in (
        ("pooled validation", found.validation),
        ("server test", found.server_test),
    ):
        for key in ("sensitivity", "specificity"):
            if metrics and _finite(metrics.get(key)):
                rows.append([f"{label} {key} at the threshold", float(metrics[key])])
    return (
        "<p>Decision threshold stored with the final model (chosen on the "
        "hospitals' validation splits, docs/evaluation.md):</p>"
        + _table(["", ""], rows)
    )


@dataclass(frozen=True)
class Section:
    """One ``<h2>`` section: its plot (or a note when there is none) and a table."""

    sid: str
    title: str
    plot: str | None
    empty: str
    extra: str = ""

    def render(self, plots: Mapping[str, Plot], images: Mapping[str, str]) -> str:
        parts = [f'<h2 id="{self.sid}">{html.escape(self.title)}</h2>']
        plot = plots.get(self.plot) if self.plot else None
        if plot is not None:
            parts.append(_figure(plot, images[plot.name]))
        elif self.empty:
            parts.append(f'<p class="note">{html.escape(self.empty)}</p>')
        parts.append(self.extra)
        return "\n".join(parts)


def _sections(history: RunHistory, class_names: Sequence[str]) -> list[Section]:
    dp = reports_epsilon(history)
    return [
        Section(
            "server",
            "Server metrics per round",
            "server-metrics",
            "No server-side evaluation (server-eval = false).",
            _server_table(history),
        ),
        Section(
            "hospitals",
            "Per-hospital metrics per round",
            "hospital-metrics",
            "No per-hospital metrics were reported.",
            _hospital_table(history),
        ),
        Section(
            "privacy",
            "Differential privacy",
            "dp-epsilon" if dp else None,
            "" if dp else "No hospital reported a privacy budget (DP off).",
        ),
        Section(
            "labels",
            "Label distribution per hospital",
            "label-distribution",
            "No hospital reported label counts.",
            _label_table(history, class_names),
        ),
        Section(
            "contributions",
            "Contribution of each hospital",
            None,
            ""
            if history.contributions
            else "Not measured (run config contribution = false).",
            _contribution_table(history),
        ),
        Section(
            "roc",
            "Final ROC curve",
            "roc",
            "No ROC curve: no server-side test set, or it holds a single class.",
            _roc_table(history.roc or []),
        ),
    ]


def render_html(
    history: RunHistory,
    plots: Sequence[Plot],
    *,
    images: Mapping[str, str],
    run_config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] = (),
) -> str:
    """Render the report page; ``images`` maps each plot name to its ``src``."""
    by_name = {p.name: p for p in plots}
    parts = _head(history)
    parts += [s.render(by_name, images) for s in _sections(history, class_names)]
    parts.append(_problems_section(history))
    if run_config:
        parts.append('<h2 id="config">Run configuration</h2>')
        parts.append(_table(["key", "value"], sorted(run_config.items())))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_plots(history: RunHistory, class_names: Sequence[str] = ()) -> list[Plot]:
    """Every plot the history supports (plots without data are left out)."""
    plots = [
        plot_server(history),
        plot_hospitals(history),
        plot_epsilon(history),
        plot_labels(label_distribution(history), class_names),
        plot_roc(history.roc or []),
    ]
    return [p for p in plots if p is not None]


def write_report(
    history: RunHistory,
    out_dir: Path,
    *,
    run_config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and ``report-<plot>.png``; return the HTML path.

    ``class_names`` defaults to the history's ``class_names`` when present.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(class_names if class_names is not None else history.class_names or ())
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
