"""Federated statistics out: ``stats.json``, ``stats.png``, ``stats.html``, tables.

``stats.json`` holds numbers only (through :mod:`app.jsonio`); the HTML page is
self-contained (the PNG embedded as a data URI). A suppressed cell prints as
``suppressed`` and is ``null`` in the JSON.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.jsonio import write_json
from app.stats.summary import FeatureSummary, SiteSummary, StatsReport

HIDDEN = "suppressed"
COLUMNS = (
    "feature",
    "n",
    "missing",
    "mean",
    "std",
    "min",
    "q25",
    "median",
    "q75",
    "max",
)


@dataclass(frozen=True)
class StatsFiles:
    """Where the statistics were written."""

    json: Path
    png: Path
    html: Path


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


def feature_row(feature: FeatureSummary) -> list[str]:
    """One table row: the feature's name, then its cells."""
    if not feature.shown:
        return [feature.name, *([HIDDEN] * (len(COLUMNS) - 1))]
    q = feature.quantiles or {}
    values = (
        feature.count,
        feature.missing,
        feature.mean,
        feature.std,
        feature.min,
        q.get("q25"),
        q.get("q50"),
        q.get("q75"),
        feature.max,
    )
    return [feature.name, *(_num(v) for v in values)]


def site_rows(site: SiteSummary) -> list[list[str]]:
    """The rows of one site's table (features, or the pixel intensities)."""
    features = site.features or ([site.intensity] if site.intensity else [])
    if site.suppressed:
        return [[f.name, *([HIDDEN] * (len(COLUMNS) - 1))] for f in features] or [
            ["(all)", *([HIDDEN] * (len(COLUMNS) - 1))]
        ]
    return [feature_row(f) for f in features]


def label_rows(report: StatsReport) -> list[list[str]]:
    """Per site and combined: records, then each class's count."""
    rows = []
    for site in [*report.sites, report.combined]:
        hidden = site.suppressed
        counts = [
            HIDDEN if hidden or v is None else _num(v) for v in site.labels.values()
        ]
        records = HIDDEN if hidden else _num(site.records)
        shapes = ", ".join(f"{k} ({_num(v)})" for k, v in site.image_shapes.items())
        rows.append(
            [
                site.site,
                records,
                *counts,
                *([shapes] if report.task == "imaging" else []),
            ]
        )
    return rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned numbers."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _label_header(report: StatsReport) -> list[str]:
    extra = ["image size (images)"] if report.task == "imaging" else []
    return ["site", "records", *report.class_names, *extra]


def render_text(report: StatsReport) -> str:
    """Per-site and combined tables, as ``medflower stats`` prints them."""
    noise = (
        "no noise"
        if report.noise == "none"
        else f"{report.noise} noise, epsilon={report.epsilon:g}"
    )
    parts = [
        f"Federated statistics of {report.dataset} ({report.task}): "
        f"{len(report.sites)} site(s), minimum count {report.min_count}, {noise}."
    ]
    for site in [*report.sites, report.combined]:
        title = site.site
        if site.suppressed:
            title += ": suppressed (fewer records than the minimum count)"
        elif site.sites:
            title += f" ({', '.join(site.sites)})"
        parts.append(f"\n{title}\n" + text_table(COLUMNS, site_rows(site)))
    parts.append("\nlabels\n" + text_table(_label_header(report), label_rows(report)))
    if report.failed:
        parts.append(
            "\nno answer: " + "; ".join(f"{k} ({v})" for k, v in report.failed.items())
        )
    return "\n".join(parts)


def plot_png(report: StatsReport) -> bytes:
    """Histograms per feature (or pixel intensities): combined bars, sites as lines."""
    from matplotlib.figure import Figure

    combined = report.combined
    features = combined.features or ([combined.intensity] if combined.intensity else [])
    cols = min(4, max(len(features), 1))
    rows = max(1, math.ceil(len(features) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    for k, feature in enumerate(features):
        ax = fig.add_subplot(rows, cols, k + 1)
        edges = report.edges[k] if report.task == "tabular" else report.edges[0]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        width = edges[1] - edges[0]
        if feature.histogram is not None:
            ax.bar(
                centres,
                feature.histogram,
                width=width * 0.9,
                color="0.8",
                label="combined",
            )
        for site in report.sites:
            own = site.features[k] if site.features else site.intensity
            if own is not None and own.histogram is not None:
                ax.step(centres, own.histogram, where="mid", label=site.site, lw=1)
        ax.set_title(
            feature.name + ("" if feature.shown else " (suppressed)"), fontsize=9
        )
        ax.tick_params(labelsize=7)
    if features:
        fig.axes[0].legend(fontsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: StatsReport, png: bytes) -> str:
    """One self-contained page: settings, tables per site, the histograms."""
    sections = [
        f"<h2>{html.escape(s.site)}{' (suppressed)' if s.suppressed else ''}</h2>"
        + _html_table(COLUMNS, site_rows(s))
        for s in [*report.sites, report.combined]
    ]
    image = base64.b64encode(png).decode()
    intro = html.escape(render_text(report).splitlines()[0])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>medflower federated statistics</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "td:first-child{text-align:left}</style></head><body>"
        f"<h1>Federated statistics</h1><p>{intro}</p>"
        "<h2>labels</h2>"
        + _html_table(_label_header(report), label_rows(report))
        + "".join(sections)
        + "<h2>histograms</h2>"
        + f"<img alt='histograms' src='data:image/png;base64,{image}'>"
        "</body></html>\n"
    )


def write_outputs(report: StatsReport, out_dir: Path) -> StatsFiles:
    """Write ``stats.json``, ``stats.png`` and ``stats.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = StatsFiles(
        out_dir / "stats.json", out_dir / "stats.png", out_dir / "stats.html"
    )
    write_json(files.json, report.to_json())
    png = plot_png(report)
    files.png.write_bytes(png)
    files.html.write_text(render_html(report, png))
    return files
