"""Laplace / Gaussian release of cohort statistics: noise scales and combination."""

from __future__ import annotations

import numpy as np
import pytest

from app.privacy.cohort_release import (
    FeatureBounds,
    combine_releases,
    gaussian_scale,
    gaussian_vector,
    laplace_vector,
    release_cohort_stats,
)

pytest.importorskip("opendp")
DRAWS = 4_000  # OpenDP samples exactly (slowly); tolerances are >= 3.5 standard errors


def test_laplace_noise_has_scale_sensitivity_over_epsilon():
    noise = laplace_vector(np.zeros(DRAWS), sensitivity=2.0, epsilon=0.5)
    b = 2.0 / 0.5
    # Laplace(b): E|X| = b, Var = 2 b^2; about 1.6% and 3.5% standard errors here.
    assert np.mean(np.abs(noise)) == pytest.approx(b, rel=0.06)
    assert np.var(noise) == pytest.approx(2 * b * b, rel=0.14)
    assert abs(np.mean(noise)) < 4 * np.sqrt(2) * b / np.sqrt(DRAWS)
    # Integer (discrete Laplace) counts stay integers with the same spread.
    counts = laplace_vector(
        np.full(DRAWS // 2, 50), sensitivity=1, epsilon=1.0, integer=True
    )
    assert np.all(counts == np.round(counts))
    # Discrete Laplace with scale 1: E|X| = 2a / (1 - a^2), a = exp(-1).
    a = np.exp(-1.0)
    assert np.mean(np.abs(counts - 50)) == pytest.approx(2 * a / (1 - a * a), rel=0.09)


def test_gaussian_noise_matches_its_calibrated_std():
    sigma = gaussian_scale(sensitivity=1.0, epsilon=1.0, delta=1e-5)
    # The analytic Gaussian mechanism needs ~3.73 here; the zCDP route is a bit looser.
    assert 3.6 < sigma < 4.6
    assert gaussian_scale(sensitivity=2.0, epsilon=1.0, delta=1e-5) == pytest.approx(
        2 * sigma, rel=1e-3
    )
    noise = gaussian_vector(np.zeros(DRAWS), sensitivity=1.0, epsilon=1.0, delta=1e-5)
    assert np.std(noise) == pytest.approx(sigma, rel=0.045)


def test_cohort_release_is_close_to_the_truth_for_large_epsilon_and_noisy_for_small():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(55, 9, 3000), rng.normal(130, 15, 3000)])
    y = (rng.random(3000) < 0.3).astype(int)
    bounds = FeatureBounds(np.array([0.0, 50.0]), np.array([120.0, 250.0]))
    loose = release_cohort_stats(x, y, bounds=bounds, num_classes=2, epsilon=50.0)
    assert loose.count == pytest.approx(3000, abs=5)
    assert loose.prevalence[1] == pytest.approx(y.mean(), abs=0.01)
    assert np.allclose(loose.means, x.mean(axis=0), atol=0.5)
    assert np.allclose(np.sqrt(loose.variances), x.std(axis=0), rtol=0.1)
    tight = [
        release_cohort_stats(
            x[:50], y[:50], bounds=bounds, num_classes=2, epsilon=0.1
        ).means[0]
        for _ in range(3)
    ]
    assert np.std(tight) > 1.0  # strong privacy on 50 patients: visibly noisy
    gauss = release_cohort_stats(
        x,
        y,
        bounds=bounds,
        num_classes=2,
        epsilon=50.0,
        delta=1e-6,
        mechanism="gaussian",
    )
    assert np.allclose(gauss.means, x.mean(axis=0), atol=1.0)


def test_combined_releases_give_global_standardisation():
    rng = np.random.default_rng(1)
    parts = [rng.normal(m, s, size=(2000, 1)) for m, s in ((40, 5), (60, 10))]
    bounds = FeatureBounds(np.array([0.0]), np.array([120.0]))
    releases = [
        release_cohort_stats(
            p, np.zeros(len(p), int), bounds=bounds, num_classes=2, epsilon=30.0
        )
        for p in parts
    ]
    mean, std = combine_releases(releases)
    pooled = np.concatenate(parts)
    assert mean[0] == pytest.approx(pooled.mean(), abs=0.5)
    assert std[0] == pytest.approx(pooled.std(), rel=0.05)


def test_invalid_requests_are_refused():
    bounds = FeatureBounds(np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="pure DP"):
        release_cohort_stats(
            np.zeros((3, 1)),
            np.zeros(3, int),
            bounds=bounds,
            num_classes=2,
            epsilon=1.0,
            delta=1e-5,
        )
    with pytest.raises(ValueError, match="upper > lower"):
        FeatureBounds(np.array([1.0]), np.array([1.0]))


def test_public_counts_split_the_budget_over_the_feature_sums_only():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, size=(500, 4))
    y = (rng.random(500) < 0.4).astype(int)
    bounds = FeatureBounds(np.zeros(4), np.full(4, 10.0))
    release = release_cohort_stats(
        x, y, bounds=bounds, num_classes=2, epsilon=1.0, public_counts=True
    )
    assert release.label_counts.tolist() == np.bincount(y, minlength=2).tolist()
    # Laplace scale d / (eps / 2) in half-range units; std = sqrt(2) * scale.
    assert release.unit_noise_std == pytest.approx(np.sqrt(2) * 4 / 0.5)
    noised = release_cohort_stats(x, y, bounds=bounds, num_classes=2, epsilon=1.0)
    assert noised.unit_noise_std == pytest.approx(np.sqrt(2) * 4 / (1 / 3))


def test_combination_falls_back_to_the_public_bounds_where_noise_dominates():
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.normal(40, 2, 400), rng.normal(5, 1, 400)])
    y = np.zeros(400, dtype=int)
    bounds = FeatureBounds(np.array([0.0, 0.0]), np.array([100.0, 10.0]))
    radius = bounds.radius

    def releases(epsilon):  # four hospitals, one quarter of the records each
        return [
            release_cohort_stats(
                x[i::4],
                y[i::4],
                bounds=bounds,
                num_classes=1,
                epsilon=epsilon,
                public_counts=True,
            )
            for i in range(4)
        ]

    for _ in range(5):  # very noisy: every statistic stays within the public prior
        mean, std = combine_releases(releases(0.01), radius=radius)
        assert np.all(np.abs(mean - bounds.midpoint) <= radius)
        # noise far above any variance: the floor is (almost) the whole half-range
        assert np.all(std >= 0.9 * radius) and np.all(std <= radius)
    mean, std = combine_releases(releases(500.0), radius=radius)
    assert np.allclose(mean, x.mean(axis=0), atol=0.5)
    # the smaller spread (2 of a 50 half-range) is floored at 10% of the range
    assert std[0] == pytest.approx(0.1 * radius[0], rel=0.05)
    assert std[1] == pytest.approx(x[:, 1].std(), rel=0.1)
