"""The federated-statistics exchange, independent of how hospitals are reached.

Tabular data take two queries: ``ranges`` (each site's per-feature extremes, so
all sites bin on the same edges) then ``summary`` over those edges. Under DP
noise the edges are the dataset's public bounds instead (extremes are never
released) and one query suffices; images always bin intensities on [0, 1].

An :data:`Ask` sends one query and returns the decoded answers: over a Flower
Grid (:func:`grid_asker`, the ServerApp's ``mode = "stats"``) or by calling each
hospital's function in this process (:func:`local_asker`, ``medflower stats``);
both decode every reply from the wire form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.config import RunConfig
from app.stats.hospital import answer
from app.stats.query import QUERY, REPLY_KEY, QueryError, StatsQuery
from app.stats.release import (
    ImageRelease,
    RangeRelease,
    ReleaseError,
    SiteRelease,
    TabularRelease,
    expected_sizes,
    release_class,
)
from app.stats.summary import (
    StatsReport,
    combine_tabular,
    summarise_images,
    summarise_tabular,
)
from data.registry import dataset_class
from data.spec import DataError, DatasetInfo, SiteRecords


@dataclass
class Answers:
    """The releases of one query, by site, and why other sites gave none."""

    releases: dict[str, SiteRelease] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


Ask = Callable[[StatsQuery], Answers]


@dataclass(frozen=True)
class StatsPlan:
    """What the coordinator knows before asking: the data's shape, the settings."""

    task: str
    dataset: str
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    min_count: int = 10
    bins: int = 10
    noise: str = "none"
    epsilon: float = 0.0
    delta: float = 0.0
    bounds: tuple[tuple[float, float], ...] | None = None  # public a-priori ranges

    def query(self, stage: str, **edges: Any) -> StatsQuery:
        return StatsQuery(
            task=self.task,
            stage=stage,
            num_classes=len(self.class_names),
            min_count=self.min_count,
            bins=self.bins,
            noise=self.noise,
            epsilon=self.epsilon if self.noise != "none" else 0.0,
            delta=self.delta if self.noise == "gaussian" else 0.0,
            **edges,
        )


def stats_plan(cfg: RunConfig, info: DatasetInfo) -> StatsPlan:
    """The statistics a run config asks for, over data shaped like ``info``."""
    classes = info.class_names or tuple(str(k) for k in range(info.num_classes))
    width = info.input_shape[0] if cfg.task == "tabular" else 0
    return StatsPlan(
        task=cfg.task,
        dataset=cfg.dataset,
        class_names=tuple(classes),
        feature_names=info.feature_names or tuple(f"x{j}" for j in range(width)),
        min_count=cfg.stats_min_count,
        bins=cfg.stats_bins,
        noise=cfg.stats_noise,
        epsilon=cfg.stats_noise_epsilon,
        delta=cfg.dp_delta,
        bounds=dataset_class(cfg.dataset).feature_bounds,
    )


def decode(
    record: Mapping[str, Any] | None, query: StatsQuery, num_features: int
) -> SiteRelease:
    """A reply's release, checked against the query (ReleaseError if malformed)."""
    if record is None:
        raise ReleaseError(f"no '{REPLY_KEY}' record")
    sizes = expected_sizes(query, num_features)
    return release_class(query).from_record(record, sizes)


def agreed_edges(
    ranges: Sequence[RangeRelease], width: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Histogram ranges spanning every site's released extremes.

    A feature no site shows gets [0, 1]; a constant one a unit-wide range.
    """
    live = [r for r in ranges if not r.suppressed]
    lower, upper = np.zeros(width), np.ones(width)
    for j in range(width):
        seen = [(r.minima[j], r.maxima[j]) for r in live if r.shown[j]]
        if seen:
            lo, hi = min(s[0] for s in seen), max(s[1] for s in seen)
            lower[j], upper[j] = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
    return tuple(map(float, lower)), tuple(map(float, upper))


def tabular_edges(plan: StatsPlan, ask: Ask, failed: dict[str, str]) -> StatsQuery:
    """The summary query: public bounds under noise, else the agreed ranges."""
    if plan.noise != "none":
        if plan.bounds is None:
            raise QueryError(
                f"dataset '{plan.dataset}' declares no public feature bounds: DP "
                "noise on tabular statistics needs them (stats-noise='none' works)."
            )
        lower, upper = zip(*plan.bounds, strict=True)
        return plan.query("summary", lower=tuple(lower), upper=tuple(upper))
    answers = ask(plan.query("ranges"))
    failed.update(answers.failed)
    ranges = [r for r in answers.releases.values() if isinstance(r, RangeRelease)]
    lower, upper = agreed_edges(ranges, len(plan.feature_names))
    return plan.query("summary", lower=lower, upper=upper)


def run_statistics(plan: StatsPlan, ask: Ask) -> StatsReport:
    """Ask, combine and summarise; raises ValueError when no site answered."""
    failed: dict[str, str] = {}
    if plan.task == "tabular":
        query = tabular_edges(plan, ask, failed)
    else:
        query = plan.query("summary")
    answers = ask(query)
    failed.update(answers.failed)
    for name in answers.releases:
        failed.pop(name, None)  # answered the summary after all
    releases = [answers.releases[n] for n in sorted(answers.releases)]
    if not releases:
        raise ValueError(
            "no hospital answered the statistics query: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        )
    names, classes = plan.feature_names, plan.class_names
    if query.task == "tabular":
        tab = [r for r in releases if isinstance(r, TabularRelease)]
        sites = [summarise_tabular(r, query, names, classes) for r in tab]
        live = [r for r in tab if not r.suppressed]
        combined = (
            summarise_tabular(
                combine_tabular(live), query, names, classes, [r.site for r in live]
            )
            if live
            else replace(sites[0], site="combined", sites=[])
        )
    else:
        imgs = [r for r in releases if isinstance(r, ImageRelease)]
        sites = [summarise_images([r], query, classes) for r in imgs]
        combined = summarise_images(imgs, query, classes)
    return StatsReport(
        task=plan.task,
        dataset=plan.dataset,
        min_count=plan.min_count,
        noise=plan.noise,
        epsilon=query.epsilon if query.noisy else None,
        delta=query.delta if query.noise == "gaussian" else None,
        bins=plan.bins,
        class_names=list(classes),
        edges=query.edges().tolist(),
        sites=sites,
        combined=combined,
        failed=dict(sorted(failed.items())),
    )


def local_asker(
    sites: Sequence[SiteRecords], min_records: Mapping[str, int] | None = None
) -> Ask:
    """Answer each query with every site's own function, in this process.

    ``min_records`` is each hospital's own minimum (its site policy) by name.
    """
    minimums = dict(min_records or {})

    def ask(query: StatsQuery) -> Answers:
        out = Answers()
        for site in sites:
            try:
                release = answer(site, query, min_records=minimums.get(site.name, 0))
                width = site.x.shape[1] if site.x.ndim == 2 else 0
                out.releases[site.name] = decode(release.to_record(), query, width)
            except (QueryError, DataError, ReleaseError) as err:
                out.failed[site.name] = getattr(err, "public_reason", str(err))
        return out

    return ask


__all__ = [
    "QUERY",
    "Answers",
    "Ask",
    "StatsPlan",
    "local_asker",
    "run_statistics",
    "stats_plan",
]
