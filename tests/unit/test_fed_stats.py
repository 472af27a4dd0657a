"""Federated statistics: exact against numpy on pooled data, suppression, DP noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.stats.hospital import answer, intensity_shares
from app.stats.protocol import StatsPlan, decode, local_asker, run_statistics
from app.stats.query import QueryError, StatsQuery
from app.stats.release import ReleaseError
from data.spec import DatasetInfo, SiteRecords

INFO = DatasetInfo(task="tabular", input_shape=(3,), num_classes=2)
NAMES = ("age", "chol", "flag")


def _site(name: str, n: int, seed: int, missing: float = 0.1) -> SiteRecords:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.normal(55, 9, n), rng.normal(240, 50, n), rng.integers(0, 2, n)]
    ).astype(float)
    x[rng.random(x.shape) < missing] = np.nan
    return SiteRecords(name, x, rng.integers(0, 2, n), INFO)


SITES = [_site("a", 120, 1), _site("b", 80, 2, 0.3), _site("c", 40, 3)]
PLAN = StatsPlan("tabular", "synthetic", ("no", "yes"), NAMES, min_count=0, bins=8)


def test_combined_statistics_equal_numpy_on_the_pooled_records():
    report = run_statistics(PLAN, local_asker(SITES))
    pooled = np.concatenate([s.x for s in SITES])
    y = np.concatenate([s.y for s in SITES])
    combined = report.combined
    assert combined.records == len(pooled)
    assert combined.labels == {
        "no": float((y == 0).sum()),
        "yes": float((y == 1).sum()),
    }
    for j, feature in enumerate(combined.features):
        column = pooled[:, j][~np.isnan(pooled[:, j])]
        assert feature.count == len(column)
        assert feature.missing == np.isnan(pooled[:, j]).sum()
        assert feature.mean == pytest.approx(column.mean(), rel=1e-12)
        assert feature.std == pytest.approx(column.std(), rel=1e-9)
        assert (feature.min, feature.max) == (column.min(), column.max())
        edges = np.asarray(report.edges[j])
        assert feature.histogram == np.histogram(column, bins=edges)[0].tolist()
        width = edges[1] - edges[0]
        qs = np.quantile(column, [0.25, 0.5, 0.75])
        for q, value in zip((25, 50, 75), qs, strict=True):
            assert abs(feature.quantiles[f"q{q}"] - value) <= width
    # each site's own numbers are its own records'
    site_b = report.sites[1]
    assert site_b.features[1].mean == pytest.approx(np.nanmean(SITES[1].x[:, 1]))


def test_small_sites_features_and_label_cells_are_suppressed_at_the_hospital():
    plan = dataclasses.replace(PLAN, min_count=50)
    report = run_statistics(plan, local_asker(SITES, min_records={"b": 100}))
    by_name = {s.site: s for s in report.sites}
    # c has 40 records (< 50); b's own minimum 100 overrides the query's 50
    assert by_name["c"].suppressed and by_name["b"].suppressed
    assert by_name["c"].records is None
    assert not any(f.shown for f in by_name["c"].features)
    assert report.combined.sites == ["a"]
    assert report.combined.features[0].count == (~np.isnan(SITES[0].x[:, 0])).sum()
    # a feature below the minimum: hidden, and its true values never sent
    site = dataclasses.replace(SITES[1], x=SITES[1].x.copy())
    site.x[5:, 2] = np.nan  # 5 values of 'flag' left
    query = StatsQuery(
        "tabular",
        "summary",
        2,
        min_count=10,
        bins=4,
        lower=(0, 0, 0),
        upper=(100, 500, 1),
    )
    wire = answer(site, query).to_record()
    assert wire["shown"] == [True, True, False]
    assert wire["counts"][2] == 0 and wire["missing"][2] == 0
    assert wire["histograms"][8:] == [0.0] * 4
    # a label cell below the minimum hides every label cell (the total is known)
    few = dataclasses.replace(SITES[0], y=np.r_[np.ones(3), np.zeros(117)].astype(int))
    assert answer(few, query).to_record()["label-shown"] == [False, False]


def test_laplace_noise_reuses_the_cohort_release_and_needs_public_bounds():
    with pytest.raises(QueryError, match="public feature bounds"):
        run_statistics(
            dataclasses.replace(PLAN, noise="laplace", epsilon=1.0), local_asker(SITES)
        )
    bounds = ((20.0, 90.0), (0.0, 600.0), (0.0, 1.0))
    plan = dataclasses.replace(PLAN, noise="laplace", epsilon=50.0, bounds=bounds)
    exact = run_statistics(dataclasses.replace(plan, noise="none"), local_asker(SITES))
    noisy = run_statistics(plan, local_asker(SITES))
    assert noisy.epsilon == 50.0 and noisy.combined.features[0].min is None
    got, true = noisy.combined.features[0], exact.combined.features[0]
    assert got.histogram != true.histogram  # noised
    assert got.mean == pytest.approx(true.mean, abs=3.0)  # but close at epsilon 50
    ranges = StatsQuery("tabular", "ranges", 2, noise="laplace", epsilon=1.0)
    with pytest.raises(QueryError, match="not released under DP"):
        answer(SITES[0], ranges)


def test_image_intensities_and_sizes():
    rng = np.random.default_rng(0)
    images = rng.random((30, 1, 8, 8))
    info = DatasetInfo(task="imaging", input_shape=(1, 8, 8), num_classes=2)
    sites = [
        SiteRecords(n, images[i::2], rng.integers(0, 2, 15), info)
        for i, n in enumerate("ab")
    ]
    edges = np.linspace(0, 1, 6)
    per_image = [np.histogram(im, bins=edges)[0] / im.size for im in images]
    np.testing.assert_allclose(
        intensity_shares(images, edges), np.sum(per_image, axis=0)
    )
    plan = StatsPlan("imaging", "synthetic", ("0", "1"), min_count=0, bins=5)
    report = run_statistics(plan, local_asker(sites))
    assert report.combined.image_shapes == {"1x8x8": 30.0}
    assert report.combined.intensity.mean == pytest.approx(0.5, abs=0.05)


def test_a_malformed_reply_is_refused_with_what_is_wrong():
    query = StatsQuery(
        "tabular", "summary", 2, bins=4, lower=(0, 0, 0), upper=(1, 1, 1)
    )
    record = answer(SITES[0], query).to_record()
    record["histograms"] = record["histograms"][:-1]
    with pytest.raises(ReleaseError, match="'histograms' must hold 12 values"):
        decode(record, query, 3)


def test_a_sites_policy_minimum_reaches_its_statistics(tmp_path):
    from app.stats.client import hospital_min_records
    from scripts.stats_cli import site_minimums

    policy = tmp_path / "policy.toml"
    policy.write_text("min-records = 150\n")
    assert hospital_min_records({"policy": str(policy)}) == 150
    assert hospital_min_records({"policy": str(policy), "min-records": 200}) == 200
    assert site_minimums([f"switzerland={policy}"]) == {"switzerland": 150}
    with pytest.raises(ValueError, match="SITE=PATH"):
        site_minimums(["switzerland"])
