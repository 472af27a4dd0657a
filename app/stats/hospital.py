"""A hospital's answer to a statistics query: aggregates only, suppressed, noised.

Why suppression *and* noise: a cell counting very few patients (the three
patients over 85 in a small clinic) can point at individuals even without any
record leaving. A hospital therefore withholds the whole site when it has fewer
records than its minimum, and any feature or label cell counting fewer (a count
of 0 is shown: nothing to hide). The minimum is the larger of the
coordinator's (``min-count`` in the query) and the hospital's own
(``min_records``: its policy). Suppression is statistical disclosure control,
not a formal guarantee; for one, the optional DP noise reuses the
cohort-statistics release (:func:`app.privacy.cohort_release.release_cohort_stats`
for label counts and feature sums; its OpenDP samplers for the histograms), with
the budget split equally over the queries (basic composition).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.privacy.cohort_release import (
    FeatureBounds,
    gaussian_vector,
    laplace_vector,
    release_cohort_stats,
)
from app.stats.query import QueryError, StatsQuery
from app.stats.release import (
    ImageRelease,
    RangeRelease,
    SiteRelease,
    TabularRelease,
    expected_sizes,
    release_class,
)
from data.spec import DataError, SiteRecords


def minimum_count(query: StatsQuery, min_records: int) -> int:
    """The threshold a hospital applies: the coordinator's or its own, the larger."""
    return max(int(query.min_count), int(min_records), 0)


def shown_cells(counts: np.ndarray, minimum: int) -> np.ndarray:
    """Cells that may be released: empty ones, or counting at least ``minimum``."""
    counts = np.asarray(counts)
    return (counts == 0) | (counts >= minimum)


def answer(
    records: SiteRecords, query: StatsQuery, *, min_records: int = 0
) -> SiteRelease:
    """This hospital's release for ``query`` (see the module docstring).

    ``min_records`` is the hospital's own minimum (its site policy); the query
    cannot lower it.

    Raises
    ------
    QueryError
        The query does not fit the data (task, feature count, stage).
    DataError
        A label lies outside the query's classes.
    """
    _check_fit(records, query)
    minimum = minimum_count(query, min_records)
    if len(records) < max(minimum, 1):
        sizes = expected_sizes(query, _width(records))
        return release_class(query).empty(records.name, query.noise, sizes)
    handler = ANSWERS.get((query.task, query.stage))
    if handler is None:
        raise QueryError(f"no '{query.stage}' stage for {query.task} statistics.")
    return handler(records, query, minimum)


def _width(records: SiteRecords) -> int:
    return int(records.x.shape[1]) if records.x.ndim == 2 else 0


def _check_fit(records: SiteRecords, query: StatsQuery) -> None:
    tabular = records.x.ndim == 2
    if tabular != (query.task == "tabular"):
        raise QueryError(
            f"a {query.task} statistics query, but hospital {records.name} holds "
            f"{'tabular' if tabular else 'imaging'} data."
        )
    if tabular and query.stage == "summary" and len(query.lower) != _width(records):
        raise QueryError(
            f"the query has histogram ranges for {len(query.lower)} features, "
            f"hospital {records.name}'s data have {_width(records)}."
        )
    if query.stage == "ranges" and query.noisy:
        raise QueryError(
            "feature extremes are not released under DP noise: histogram ranges "
            "must come from the dataset's public bounds."
        )
    y = np.asarray(records.y)
    if y.size and (y.min() < 0 or y.max() >= query.num_classes):
        raise DataError(
            f"Hospital {records.name}: a label is outside the query's classes "
            f"0..{query.num_classes - 1}.",
            "a label is outside the federation's classes",
        )


def _labels(
    records: SiteRecords, query: StatsQuery, minimum: int
) -> tuple[np.ndarray, np.ndarray]:
    """Label counts and which may be shown: all or none, since the site's record
    count is released and would give away a lone hidden cell.
    """
    y = np.asarray(records.y, dtype=np.int64)
    counts = np.bincount(y, minlength=query.num_classes)
    shown = shown_cells(counts, minimum)
    return counts.astype(float), np.full(len(counts), bool(shown.all()))


# ------------------------------------------------------------------ tabular


def _ranges(records: SiteRecords, query: StatsQuery, minimum: int) -> RangeRelease:
    x = np.asarray(records.x, dtype=float)
    present = ~np.isnan(x)
    counts = present.sum(axis=0)
    shown = shown_cells(counts, minimum) & (counts > 0)
    minima = np.where(present, x, np.inf).min(axis=0)
    maxima = np.where(present, x, -np.inf).max(axis=0)
    return RangeRelease(
        site=records.name,
        suppressed=False,
        records=float(len(records)),
        noise=query.noise,
        shown=shown,
        minima=np.where(shown, minima, 0.0),
        maxima=np.where(shown, maxima, 0.0),
    )


def histograms(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per-feature histogram counts of the non-missing values, ``(features, bins)``.

    Values outside a feature's edges fall into its first or last bin.
    """
    out = np.zeros((x.shape[1], edges.shape[1] - 1))
    for j in range(x.shape[1]):
        column = x[:, j][~np.isnan(x[:, j])]
        clipped = np.clip(column, edges[j, 0], edges[j, -1])
        out[j] = np.histogram(clipped, bins=edges[j])[0]
    return out


def _tabular(records: SiteRecords, query: StatsQuery, minimum: int) -> TabularRelease:
    x = np.asarray(records.x, dtype=float)
    edges = query.edges()
    mid = (edges[:, 0] + edges[:, -1]) / 2
    present = ~np.isnan(x)
    counts = present.sum(axis=0).astype(float)
    shown = shown_cells(counts, minimum)
    label_counts, label_shown = _labels(records, query, minimum)
    hist = histograms(x, edges)
    missing = len(x) - counts
    if query.noisy:
        noisy = _noisy_tabular(x, records.y, query, hist, missing)
        label_counts, sums, sq_sums, hist, missing = noisy
        counts = hist.sum(axis=1)
        minima = maxima = np.zeros_like(counts)  # extremes are not released
    else:
        centred = np.where(present, x - mid, 0.0)
        sums, sq_sums = centred.sum(axis=0), (centred**2).sum(axis=0)
        minima = np.where(present, x, np.inf).min(axis=0)
        maxima = np.where(present, x, -np.inf).max(axis=0)
    hide = ~shown | (counts == 0)
    return TabularRelease(
        site=records.name,
        suppressed=False,
        records=float(max(label_counts.sum(), 0.0)),
        noise=query.noise,
        label_counts=np.where(label_shown, label_counts, 0.0),
        label_shown=label_shown,
        shown=shown,
        counts=np.where(shown, counts, 0.0),
        missing=np.where(shown, missing, 0.0),
        centred_sums=np.where(hide, 0.0, sums),
        centred_sq_sums=np.where(hide, 0.0, sq_sums),
        minima=np.where(hide, 0.0, minima),
        maxima=np.where(hide, 0.0, maxima),
        histograms=np.where(shown[:, None], hist, 0.0),
        midpoint=mid,
    )


def _noisy_tabular(
    x: np.ndarray,
    y: np.ndarray,
    query: StatsQuery,
    hist: np.ndarray,
    missing: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """DP versions of the label counts, centred sums, histograms, missing counts.

    A quarter of the budget each for the label counts, the sums, the sums of
    squares (the cohort release, clipped to the public edges' range) and the
    histograms with a "missing" bin: one record adds one to exactly one bin of
    each of the ``d`` features (L1 sensitivity ``d``, L2 ``sqrt(d)``).
    """
    edges = query.edges()
    bounds = FeatureBounds(edges[:, 0], edges[:, -1])
    filled = np.where(np.isnan(x), bounds.midpoint, x)  # a missing value adds 0
    cohort = release_cohort_stats(
        filled,
        np.asarray(y, dtype=np.int64),
        bounds=bounds,
        num_classes=query.num_classes,
        epsilon=query.epsilon * 3 / 4,
        delta=query.delta * 3 / 4,
        mechanism=query.noise,
    )
    d = x.shape[1]
    cells = np.concatenate([hist, missing[:, None]], axis=1)
    noisy = add_noise(
        cells.reshape(-1),
        query,
        share=1 / 4,
        l1=float(d),
        l2=float(np.sqrt(d)),
        integer=True,
    ).reshape(cells.shape)
    noisy = np.clip(noisy, 0.0, None)
    return (
        np.clip(cohort.label_counts, 0.0, None),
        cohort.centred_sums,
        cohort.centred_sq_sums,
        noisy[:, :-1],
        noisy[:, -1],
    )


def add_noise(
    values: np.ndarray,
    query: StatsQuery,
    *,
    share: float,
    l1: float,
    l2: float,
    integer: bool = False,
) -> np.ndarray:
    """``values`` with the query's DP noise for ``share`` of its budget.

    ``l1``/``l2``: how far one record can move ``values`` (Laplace uses L1,
    Gaussian L2).
    """
    if query.noise == "laplace":
        return laplace_vector(
            values, sensitivity=l1, epsilon=query.epsilon * share, integer=integer
        )
    return gaussian_vector(
        values,
        sensitivity=l2,
        epsilon=query.epsilon * share,
        delta=query.delta * share,
        integer=integer,
    )


# ------------------------------------------------------------------ imaging


def intensity_shares(images: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Sum over images of each image's share of pixels per intensity bin.

    Bins follow ``numpy.histogram`` (last bin closed); values outside [0, 1]
    fall into the end bins.
    """
    flat = np.asarray(images, dtype=float).reshape(len(images), -1)
    bins = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, flat, side="right") - 1, 0, bins - 1)
    offsets = np.arange(len(flat))[:, None] * bins
    counts = np.bincount((idx + offsets).reshape(-1), minlength=len(flat) * bins)
    return (counts.reshape(len(flat), bins) / flat.shape[1]).sum(axis=0)


def _images(records: SiteRecords, query: StatsQuery, minimum: int) -> ImageRelease:
    label_counts, label_shown = _labels(records, query, minimum)
    intensity = intensity_shares(records.x, query.edges()[0])
    if query.noisy:  # half the budget each; one image moves either sum by 1 (L1)
        label_counts = np.clip(
            add_noise(label_counts, query, share=1 / 2, l1=1.0, l2=1.0, integer=True),
            0.0,
            None,
        )
        intensity = np.clip(
            add_noise(intensity, query, share=1 / 2, l1=1.0, l2=1.0), 0.0, None
        )
    return ImageRelease(
        site=records.name,
        suppressed=False,
        records=float(label_counts.sum()),
        noise=query.noise,
        label_counts=np.where(label_shown, label_counts, 0.0),
        label_shown=label_shown,
        intensity=intensity,
        shape=np.asarray(records.x.shape[1:], dtype=float),
    )


# (task, stage) -> the function that answers it.
ANSWERS: dict[
    tuple[str, str], Callable[[SiteRecords, StatsQuery, int], SiteRelease]
] = {
    ("tabular", "ranges"): _ranges,
    ("tabular", "summary"): _tabular,
    ("imaging", "summary"): _images,
}
