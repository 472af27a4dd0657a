"""Releases -> per-site and combined statistics (means, spreads, quantiles).

Pure post-processing of what hospitals released: sums add up across sites, so
without noise the combined counts, means, standard deviations and histograms
equal those of the pooled records. Quantiles are read off the histograms
(linear within a bin), so hospitals never send more than bin counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from app.stats.query import QUANTILES, StatsQuery
from app.stats.release import ImageRelease, TabularRelease

COMBINED = "combined"


@dataclass(frozen=True)
class FeatureSummary:
    """One feature at one site (or combined); None = suppressed or unknown."""

    name: str
    shown: bool
    count: float | None = None
    missing: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    quantiles: dict[str, float] | None = None
    histogram: list[float] | None = None


@dataclass(frozen=True)
class SiteSummary:
    """One site's statistics, or the combination of several (``site="combined"``)."""

    site: str
    suppressed: bool
    records: float | None
    labels: dict[str, float | None]
    features: list[FeatureSummary] = field(default_factory=list)
    intensity: FeatureSummary | None = None  # imaging: pixel intensities in [0, 1]
    image_shapes: dict[str, float] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)  # combined: contributing sites


@dataclass(frozen=True)
class StatsReport:
    """Everything ``medflower stats`` and ``mode = "stats"`` report."""

    task: str
    dataset: str
    min_count: int
    noise: str
    epsilon: float | None
    delta: float | None
    bins: int
    class_names: list[str]
    edges: list[list[float]]  # per feature (imaging: one row over [0, 1])
    sites: list[SiteSummary]
    combined: SiteSummary
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def histogram_quantiles(
    hist: np.ndarray, edges: np.ndarray, qs: Sequence[float] = QUANTILES
) -> dict[str, float] | None:
    """Quantiles of a histogram, linear within the bin that holds each one."""
    hist = np.clip(np.asarray(hist, dtype=float), 0.0, None)
    total = hist.sum()
    if total <= 0:
        return None
    cum = np.cumsum(hist)
    out: dict[str, float] = {}
    for q in qs:
        target = q * total
        i = int(min(np.searchsorted(cum, target), len(hist) - 1))
        before = cum[i] - hist[i]
        frac = (target - before) / hist[i] if hist[i] > 0 else 0.0
        value = edges[i] + float(np.clip(frac, 0.0, 1.0)) * (edges[i + 1] - edges[i])
        out[f"q{round(q * 100)}"] = float(value)
    return out


def combine_tabular(releases: Sequence[TabularRelease]) -> TabularRelease:
    """Add up the released cells of every site that released anything."""
    live = [r for r in releases if not r.suppressed]
    if not live:
        raise ValueError("no site released statistics")
    first = live[0]
    shown = np.any([r.shown for r in live], axis=0)

    def extreme(values: list[np.ndarray], pick: Any, fill: float) -> np.ndarray:
        masked = [
            np.where(r.shown & (r.counts > 0), v, fill)
            for r, v in zip(live, values, strict=True)
        ]
        out = pick(masked, axis=0)
        return np.where(np.isfinite(out), out, 0.0)

    label_shown = np.any([r.label_shown for r in live], axis=0)
    return replace(
        first,
        site=COMBINED,
        records=float(sum(r.records for r in live)),
        label_counts=sum(r.label_counts for r in live),
        label_shown=label_shown,
        shown=shown,
        counts=sum(r.counts for r in live),
        missing=sum(r.missing for r in live),
        centred_sums=sum(r.centred_sums for r in live),
        centred_sq_sums=sum(r.centred_sq_sums for r in live),
        minima=extreme([r.minima for r in live], np.min, np.inf),
        maxima=extreme([r.maxima for r in live], np.max, -np.inf),
        histograms=sum(r.histograms for r in live),
    )


def _labels(
    counts: np.ndarray, shown: np.ndarray, class_names: Sequence[str]
) -> dict[str, float | None]:
    return {
        name: (float(c) if s else None)
        for name, c, s in zip(class_names, counts, shown, strict=True)
    }


def summarise_feature(
    release: TabularRelease, j: int, name: str, edges: np.ndarray
) -> FeatureSummary:
    """Feature ``j`` of ``release`` as counts, moments, extremes and quantiles."""
    if release.suppressed or not release.shown[j]:
        return FeatureSummary(name, shown=False)
    count, noisy = float(release.counts[j]), release.noise != "none"
    base = FeatureSummary(
        name,
        shown=True,
        count=count,
        missing=float(release.missing[j]),
        histogram=[float(v) for v in release.histograms[j]],
    )
    if count <= 0:
        return base
    lo, hi = float(edges[0]), float(edges[-1])
    centred_mean = release.centred_sums[j] / count
    var = max(release.centred_sq_sums[j] / count - centred_mean**2, 0.0)
    mean, std = release.midpoint[j] + centred_mean, float(np.sqrt(var))
    extremes = (None, None) if noisy else (release.minima[j], release.maxima[j])
    if noisy:  # post-processing: nothing bounded by [lo, hi] lies outside it
        mean, std = float(np.clip(mean, lo, hi)), min(std, (hi - lo) / 2)
    quantiles = histogram_quantiles(release.histograms[j], edges)
    if quantiles is not None and extremes[0] is not None:
        quantiles = {
            k: float(np.clip(v, extremes[0], extremes[1])) for k, v in quantiles.items()
        }
    return replace(
        base,
        mean=float(mean),
        std=std,
        min=None if extremes[0] is None else float(extremes[0]),
        max=None if extremes[1] is None else float(extremes[1]),
        quantiles=quantiles,
    )


def summarise_tabular(
    release: TabularRelease,
    query: StatsQuery,
    feature_names: Sequence[str],
    class_names: Sequence[str],
    sites: Sequence[str] = (),
) -> SiteSummary:
    """One site's (or the combined) tabular statistics."""
    edges = query.edges()
    return SiteSummary(
        site=release.site,
        suppressed=release.suppressed,
        records=None if release.suppressed else float(release.records),
        labels=_labels(
            release.label_counts, release.label_shown & ~release.suppressed, class_names
        ),
        features=[
            summarise_feature(release, j, name, edges[j])
            for j, name in enumerate(feature_names)
        ],
        sites=list(sites),
    )


def shape_name(shape: Sequence[float]) -> str:
    """``(1, 28, 28)`` -> ``"1x28x28"`` (channels, then the spatial sizes)."""
    return "x".join(str(int(s)) for s in shape)


def summarise_images(
    releases: Sequence[ImageRelease], query: StatsQuery, class_names: Sequence[str]
) -> SiteSummary:
    """One site's statistics, or the combination of several (imaging)."""
    live = [r for r in releases if not r.suppressed]
    name = releases[0].site if len(releases) == 1 else COMBINED
    if not live:
        return SiteSummary(
            name,
            True,
            None,
            _labels(
                np.zeros(len(class_names)),
                np.zeros(len(class_names), bool),
                class_names,
            ),
        )
    edges = query.edges()[0]
    shares = sum(r.intensity for r in live)
    images = float(sum(r.records for r in live))
    centres = (edges[:-1] + edges[1:]) / 2
    dist = shares / max(float(shares.sum()), 1e-12)
    mean = float((dist * centres).sum())
    shapes: dict[str, float] = {}
    for r in live:
        key = shape_name(r.shape)
        shapes[key] = shapes.get(key, 0.0) + float(r.records)
    intensity = FeatureSummary(
        "pixel intensity",
        shown=True,
        count=images,
        mean=mean,
        std=float(np.sqrt((dist * (centres - mean) ** 2).sum())),
        quantiles=histogram_quantiles(shares, edges),
        histogram=[float(v) for v in shares],
    )
    return SiteSummary(
        site=name,
        suppressed=False,
        records=images,
        labels=_labels(
            sum(r.label_counts for r in live),
            np.any([r.label_shown for r in live], axis=0),
            class_names,
        ),
        intensity=intensity,
        image_shapes=shapes,
        sites=[r.site for r in live] if name == COMBINED else [],
    )
