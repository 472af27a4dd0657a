"""Global standardisation from DP cohort statistics (``normalisation="dp-global"``)
or from the dataset's public bounds (``normalisation="public-bounds"``).

Before round 1 the server sends every connected hospital a ``query.cohort_stats``
Message naming what to release and at which epsilon. Each hospital clips its
*training* features to the dataset's public a-priori bounds and releases its label
counts, feature sums and sums of squares with Laplace noise
(:func:`app.privacy.cohort_release.release_cohort_stats`, pure epsilon-DP,
record-level). The
server combines the releases into global means and standard deviations
(post-processing: no further privacy cost) and sends them with every train and
evaluate instruction; hospitals, the server's test set and the saved model's
preprocessing record all use them.

A hospital releases once per run: the noisy release is kept in its
``context.state`` and a repeated query gets the same values back (no new spend).
The epsilon spent is added to the hospital's reported DP-SGD epsilon
(:mod:`app.privacy.local_dp`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from app.config import RunConfig
from app.privacy.accounting import PrivacyBudgetExhausted
from app.privacy.cohort_release import (
    CohortRelease,
    FeatureBounds,
    combine_releases,
    feature_noise_std,
    release_cohort_stats,
)
from app.server.queries import ask_hospitals
from data.base import raw_splits
from data.preprocessing import Standardizer
from data.registry import dataset_class
from data.spec import HospitalData
from strategies.sampling import FederationStopped

log = logging.getLogger(__name__)

QUERY = "cohort_stats"  # message type ``query.cohort_stats``
MECHANISM = "laplace"  # pure epsilon-DP: composes with DP-SGD by adding epsilons
STATE_KEY = "dp-cohort-stats"  # the hospital's own release, in context.state
REPLY_KEY = "cohort-stats"
STATISTICS = ("label-counts", "centred-sums", "centred-sq-sums")
# Keys of the global statistics in train/evaluate ConfigRecords.
MEAN_KEY, STD_KEY = "feature-mean", "feature-std"


def dataset_bounds(dataset: str) -> FeatureBounds:
    """The public feature bounds ``dataset`` declares; ValueError if none."""
    bounds = dataset_class(dataset).feature_bounds
    if bounds is None:
        raise ValueError(f"dataset '{dataset}' declares no public feature bounds.")
    return FeatureBounds(
        np.array([lo for lo, _ in bounds], dtype=float),
        np.array([hi for _, hi in bounds], dtype=float),
    )


# ------------------------------------------------------------------ hospital side


def stats_epsilon_spent(state: RecordDict) -> float:
    """Epsilon this hospital has spent on cohort statistics in this run (0: none)."""
    record = state.config_records.get(STATE_KEY)
    return 0.0 if record is None else float(record["epsilon"])


def release_reply(
    cfg: RunConfig,
    site: HospitalData,
    query: Mapping[str, Any],
    state: RecordDict,
    *,
    budget: float,
    num_classes: int,
) -> ConfigRecord:
    """This hospital's noisy release (made once, then repeated from ``state``).

    Raises
    ------
    ValueError
        When the query asks for another mechanism, statistics or epsilon than the
        run config, or the data do not match the dataset's declared bounds.
    PrivacyBudgetExhausted
        When the release alone would exceed the hospital's budget.
    """
    epsilon = float(query.get("epsilon", math.nan))
    if query.get("mechanism") != MECHANISM or epsilon != cfg.stats_epsilon:
        raise ValueError(
            f"cohort-statistics query ({query.get('mechanism')}, epsilon={epsilon}) "
            f"does not match the run config ({MECHANISM}, "
            f"dp-stats-epsilon={cfg.stats_epsilon})."
        )
    if tuple(str(query.get("statistics", "")).split(",")) != STATISTICS:
        raise ValueError(f"unknown statistics requested: {query.get('statistics')!r}.")
    record = state.config_records.get(STATE_KEY)
    if record is None:
        if epsilon > budget:
            raise PrivacyBudgetExhausted(
                f"privacy budget exhausted: releasing cohort statistics at "
                f"epsilon={epsilon:g} exceeds the budget {budget:g}"
            )
        train, _ = raw_splits(site)
        release = release_cohort_stats(
            train.x,
            train.y,
            bounds=dataset_bounds(cfg.dataset),
            num_classes=num_classes,
            epsilon=epsilon,
            mechanism=MECHANISM,
            public_counts=True,  # = num-examples, sent exactly with every reply
        )
        record = ConfigRecord(
            {
                "label-counts": [float(v) for v in release.label_counts],
                "centred-sums": [float(v) for v in release.centred_sums],
                "centred-sq-sums": [float(v) for v in release.centred_sq_sums],
                "epsilon": epsilon,
                "mechanism": MECHANISM,
            }
        )
        state[STATE_KEY] = record  # spent: kept even if the reply is lost
        log.info(
            "Hospital %s released its cohort statistics (Laplace, epsilon=%g).",
            site.name,
            epsilon,
        )
    return ConfigRecord(dict(record))


# ------------------------------------------------------------------ server side


@dataclass
class GlobalNormalisation:
    """The federation's standardisation and who paid for it."""

    scaler: Standardizer
    epsilon: float
    released: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    noisy_records: float = 0.0

    def config(self) -> dict[str, list[float]]:
        """Entries for every train/evaluate ConfigRecord."""
        values = self.scaler.to_dict()
        return {MEAN_KEY: values["mean"], STD_KEY: values["std"]}

    def preprocessing(self) -> dict[str, Any]:
        """The saved model's preprocessing record."""
        return {
            "standardize": "global",
            **self.scaler.to_dict(),
            "note": (
                "every site standardises features with these global means/stds, "
                f"combined from the hospitals' Laplace-noised cohort statistics "
                f"(epsilon={self.epsilon:g} per hospital)"
            ),
        }

    def history(self) -> dict[str, Any]:
        """The ``normalisation`` entry of history.json."""
        return {
            "mode": "dp-global",
            "mechanism": MECHANISM,
            "unit": "record",
            "epsilon_per_hospital": self.epsilon,
            "released": sorted(self.released),
            "failed": dict(sorted(self.failed.items())),
            "noisy_records": self.noisy_records,
            **self.scaler.to_dict(),
        }


@dataclass
class PublicBoundsNormalisation(GlobalNormalisation):
    """Every site maps its features from the dataset's public bounds onto [-1, 1].

    Nothing about any hospital's data goes into the transform, so no hospital
    releases anything and none spends epsilon on it; all sites still share one
    transform (what per-site standardisation lacks).
    """

    def preprocessing(self) -> dict[str, Any]:
        return {
            "standardize": "global",
            **self.scaler.to_dict(),
            "note": (
                "every site maps features with these fixed means/stds: the "
                "dataset's public a-priori bounds onto [-1, 1] (no data statistics)"
            ),
        }

    def history(self) -> dict[str, Any]:
        return {
            "mode": "public-bounds",
            "epsilon_per_hospital": 0.0,
            "source": "the dataset's public a-priori feature bounds",
            **self.scaler.to_dict(),
        }


def public_bounds(
    grid: Grid, cfg: RunConfig, contract: Mapping[str, Any], num_classes: int
) -> GlobalNormalisation:
    """The dataset's public bounds as the federation's transform (asks no one)."""
    bounds = dataset_bounds(cfg.dataset)
    log.info(
        "Global standardisation from the public feature bounds of '%s' (no data "
        "statistics, no privacy cost).",
        cfg.dataset,
    )
    return PublicBoundsNormalisation(
        Standardizer.from_bounds(bounds.lower, bounds.upper), epsilon=0.0
    )


def _release_of(
    content: RecordDict, bounds: FeatureBounds, num_classes: int, epsilon: float
) -> CohortRelease:
    """Check a reply's shape and values; ValueError says what is wrong."""
    record = content.config_records.get(REPLY_KEY)
    if record is None:
        raise ValueError(f"no '{REPLY_KEY}' record")
    width = len(bounds.lower)
    values = {}
    for key, size in zip(STATISTICS, (num_classes, width, width), strict=True):
        array = np.asarray(record.get(key, []), dtype=float)
        if array.shape != (size,) or not np.isfinite(array).all():
            raise ValueError(f"'{key}' must be {size} finite numbers")
        values[key] = array
    if float(record.get("epsilon", math.nan)) != epsilon:
        raise ValueError("released at another epsilon")
    return CohortRelease(
        label_counts=values["label-counts"],
        centred_sums=values["centred-sums"],
        centred_sq_sums=values["centred-sq-sums"],
        midpoint=bounds.midpoint,
        epsilon=epsilon,
        delta=0.0,
        mechanism=MECHANISM,
        # public: how the hospital was told to release (checked by release_reply)
        unit_noise_std=feature_noise_std(
            width, epsilon=epsilon, mechanism=MECHANISM, public_counts=True
        ),
    )


def harmonise(
    grid: Grid,
    cfg: RunConfig,
    contract: Mapping[str, Any],
    num_classes: int,
) -> GlobalNormalisation:
    """Query every connected hospital's DP release and combine the global statistics.

    Hospitals that fail, reply late or send malformed statistics are left out (and
    named). Raises :class:`~strategies.sampling.FederationStopped` when fewer than
    ``min-hospitals`` release.
    """
    bounds = dataset_bounds(cfg.dataset)
    query = {
        **contract,
        "statistics": ",".join(STATISTICS),
        "mechanism": MECHANISM,
        "epsilon": cfg.stats_epsilon,
    }
    asked = ask_hospitals(grid, cfg, f"query.{QUERY}", query, "cohort-stats")
    releases, failed = asked.parsed(
        lambda content: _release_of(content, bounds, num_classes, cfg.stats_epsilon),
        malformed="malformed statistics",
        label="Cohort statistics",
    )
    norm_releases = list(releases.values())
    out = GlobalNormalisation(Standardizer(np.zeros(0), np.ones(0)), cfg.stats_epsilon)
    out.failed.update(failed)
    out.released.extend(releases)
    if len(norm_releases) < cfg.min_hospitals:
        raise FederationStopped(
            f"only {len(norm_releases)} hospital(s) released cohort statistics, "
            f"fewer than min-hospitals={cfg.min_hospitals}; cannot standardise "
            "features globally (normalisation='dp-global')."
        )
    mean, std = combine_releases(norm_releases, radius=bounds.radius)
    out.scaler = Standardizer(mean=mean, scale=std)
    out.noisy_records = float(sum(r.label_counts.sum() for r in norm_releases))
    log.info(
        "Global standardisation from %d hospitals' DP cohort statistics (Laplace, "
        "epsilon=%g each, ~%.0f records).",
        len(norm_releases),
        cfg.stats_epsilon,
        out.noisy_records,
    )
    return out


# How the server obtains the one global transform; data.preprocessing.NORMALISATIONS
# names the function (harmonise, public_bounds) for each run-config ``normalisation``.
GlobalNormaliser = Callable[
    [Grid, RunConfig, Mapping[str, Any], int], GlobalNormalisation
]


def message_scaler(config: Mapping[str, Any]) -> Standardizer | None:
    """The global statistics a train/evaluate instruction carries, if any."""
    if MEAN_KEY not in config:
        return None
    return Standardizer.from_dict({"mean": config[MEAN_KEY], "std": config[STD_KEY]})
