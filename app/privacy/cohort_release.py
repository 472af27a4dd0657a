"""Differentially private release of a hospital's cohort statistics (OpenDP noise).

A hospital releases its label counts and, per feature, the sum and the sum of
squares of its values clipped to public bounds, with Laplace (pure epsilon) or
Gaussian ((epsilon, delta)) noise from OpenDP's vetted samplers. Counts, label
prevalence, means and variances follow by post-processing, and the releases of
several hospitals combine exactly into global standardisation statistics.

Why clipping to *public* bounds: the noise is calibrated to how much one record
can change a sum. Bounds taken from the data would themselves leak it, so they
must come from a data dictionary (e.g. age in [0, 120]). Values are centred on the
bounds' midpoint before summing, halving the sensitivity. Neighbouring cohorts
differ by adding or removing one patient (as in Opacus' accounting), so:

* label histogram: L1 and L2 sensitivity 1;
* each feature is centred and scaled to [-1, 1] by its bounds (``(x - mid) / r``
  with ``r = (hi - lo) / 2``) before summing, so with ``d`` features the sums and
  the sums of squares each have L1 sensitivity ``d`` and L2 sensitivity
  ``sqrt(d)``. Scaling first spreads the budget so that every feature gets the
  same noise *relative to its range* (a wide-range feature cannot drown the
  binary ones); the released sums are scaled back afterwards.

The budget is split equally across the three queries (basic composition), so the
whole release is (epsilon, delta)-DP for one hospital's records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MECHANISMS = ("laplace", "gaussian")


def _dp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _space(size: int, *, integer: bool, metric: str):
    dp = _dp()
    atom = dp.atom_domain(T=int) if integer else dp.atom_domain(T=float, nan=False)
    distance = {"l1": dp.l1_distance, "l2": dp.l2_distance}[metric]
    return dp.vector_domain(atom, size=size), distance(T=int if integer else float)


def laplace_scale(*, sensitivity: float, epsilon: float) -> float:
    """Laplace scale b = sensitivity / epsilon (L1 sensitivity)."""
    if sensitivity <= 0 or epsilon <= 0:
        raise ValueError("sensitivity and epsilon must be > 0.")
    return sensitivity / epsilon


def gaussian_scale(*, sensitivity: float, epsilon: float, delta: float) -> float:
    """Return the smallest Gaussian std that OpenDP proves (epsilon, delta)-DP.

    For an L2 ``sensitivity``, via zero-concentrated DP, searched numerically.

    The discrete Gaussian OpenDP uses for integers has the same zCDP map, so the
    scale applies to integer counts as well.
    """
    if sensitivity <= 0 or epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("sensitivity, epsilon > 0 and delta in (0, 1) are required.")
    dp = _dp()
    space = _space(1, integer=False, metric="l2")
    d_in = float(sensitivity)

    def proven(scale: float) -> bool:
        gauss = space >> dp.m.then_gaussian(scale=scale)
        meas = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gauss), delta=delta)
        try:
            eps, _ = meas.map(d_in)
        except dp.OpenDPException:  # overflow: far too little noise
            return False
        return eps <= epsilon

    # Bisection on the scale (OpenDP's own search can overflow for large epsilon).
    low, high = d_in * 1e-4, d_in * 1e4
    if not proven(high):
        raise ValueError(f"epsilon={epsilon}, delta={delta} need an impractical scale.")
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (low, mid) if proven(mid) else (mid, high)
        if high - low <= 1e-9 * high:
            break
    return float(high)


def laplace_vector(
    values: Sequence[float] | np.ndarray,
    *,
    sensitivity: float,
    epsilon: float,
    integer: bool = False,
) -> np.ndarray:
    """Add Laplace noise (discrete Laplace for integers) to ``values``.

    Calibrated so the release is epsilon-DP when one record moves ``values`` by at
    most ``sensitivity`` in L1.
    """
    dp = _dp()
    values = np.asarray(values)
    scale = laplace_scale(sensitivity=sensitivity, epsilon=epsilon)
    space = _space(len(values), integer=integer, metric="l1")
    meas = space >> dp.m.then_laplace(scale=scale)
    d_in = int(np.ceil(sensitivity)) if integer else float(sensitivity)
    if meas.map(d_in) > epsilon * (1 + 1e-9):  # OpenDP's own privacy map agrees
        raise AssertionError("Laplace calibration exceeds the requested epsilon.")
    cast = int if integer else float
    return np.asarray(meas([cast(v) for v in values]), dtype=np.float64)


def gaussian_vector(
    values: Sequence[float] | np.ndarray,
    *,
    sensitivity: float,
    epsilon: float,
    delta: float,
    integer: bool = False,
) -> np.ndarray:
    """Add Gaussian noise (discrete for integers) to ``values``.

    The release is (epsilon, delta)-DP for an L2 ``sensitivity``.
    """
    dp = _dp()
    values = np.asarray(values)
    scale = gaussian_scale(sensitivity=sensitivity, epsilon=epsilon, delta=delta)
    space = _space(len(values), integer=integer, metric="l2")
    meas = space >> dp.m.then_gaussian(scale=scale)
    cast = int if integer else float
    return np.asarray(meas([cast(v) for v in values]), dtype=np.float64)


def feature_noise_std(
    num_features: int,
    *,
    epsilon: float,
    delta: float = 0.0,
    mechanism: str = "laplace",
    public_counts: bool = False,
) -> float:
    """Std of the noise :func:`release_cohort_stats` adds to each feature sum.

    In units of the feature's half-range; public (it depends on the release's
    parameters only), so a receiver can weigh the statistics by it.
    """
    d = float(num_features)
    queries = 2 if public_counts else 3
    if mechanism == "laplace":
        return float(
            np.sqrt(2.0) * laplace_scale(sensitivity=d, epsilon=epsilon / queries)
        )
    return gaussian_scale(
        sensitivity=float(np.sqrt(d)), epsilon=epsilon / queries, delta=delta / queries
    )


@dataclass(frozen=True)
class FeatureBounds:
    """Public per-feature bounds [lower, upper] (from a data dictionary, not data)."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.lower, float), np.asarray(self.upper, float)
        if lo.shape != hi.shape or lo.ndim != 1 or not np.all(hi > lo):
            raise ValueError("bounds need equal 1-D shapes with upper > lower.")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @property
    def midpoint(self) -> np.ndarray:
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> np.ndarray:
        return (self.upper - self.lower) / 2


@dataclass(frozen=True)
class CohortRelease:
    """One hospital's noisy statistics: all a server may see of its cohort."""

    label_counts: np.ndarray  # noisy, per class
    centred_sums: np.ndarray  # noisy sum of clip(x) - midpoint, per feature
    centred_sq_sums: np.ndarray  # noisy sum of (clip(x) - midpoint)^2
    midpoint: np.ndarray
    epsilon: float
    delta: float
    mechanism: str
    # Std of the noise on each feature sum / sum of squares, in units of the
    # feature's half-range (public: a function of epsilon, delta and d only).
    unit_noise_std: float = 0.0

    @property
    def count(self) -> float:
        return float(max(self.label_counts.sum(), 1.0))

    @property
    def prevalence(self) -> np.ndarray:
        counts = np.clip(self.label_counts, 0, None)
        return counts / max(counts.sum(), 1.0)

    @property
    def means(self) -> np.ndarray:
        return self.midpoint + self.centred_sums / self.count

    @property
    def variances(self) -> np.ndarray:
        centred_mean = self.centred_sums / self.count
        return np.clip(self.centred_sq_sums / self.count - centred_mean**2, 0.0, None)


def release_cohort_stats(
    x: np.ndarray,
    y: np.ndarray,
    *,
    bounds: FeatureBounds,
    num_classes: int,
    epsilon: float,
    delta: float = 0.0,
    mechanism: str = "laplace",
    public_counts: bool = False,
) -> CohortRelease:
    """Release label counts and clipped feature sums / sums of squares with DP noise.

    ``mechanism='laplace'`` gives epsilon-DP (``delta`` must be 0);
    ``'gaussian'`` gives (epsilon, delta)-DP. The budget is split in three, or, with
    ``public_counts``, in two over the feature queries while the label counts are
    returned exactly: only for a caller that already releases them exactly (the
    federation's FedAvg weight ``num-examples``), where noising them buys nothing.
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}.")
    if mechanism == "laplace" and delta != 0:
        raise ValueError("The Laplace mechanism is pure DP: use delta=0.")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(bounds.lower):
        raise ValueError(f"x must be (n, {len(bounds.lower)}), got {x.shape}.")
    r = bounds.radius
    unit = (np.clip(x, bounds.lower, bounds.upper) - bounds.midpoint) / r  # in [-1, 1]
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)
    d = float(x.shape[1])
    queries = (
        (unit.sum(axis=0), d, float(np.sqrt(d)), False),
        ((unit**2).sum(axis=0), d, float(np.sqrt(d)), False),
    )
    if not public_counts:
        queries = ((counts, 1.0, 1.0, True), *queries)
    eps_q, delta_q = epsilon / len(queries), delta / len(queries)
    noisy = [] if not public_counts else [counts.astype(np.float64)]
    unit_noise_std = feature_noise_std(
        x.shape[1],
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        public_counts=public_counts,
    )
    for values, l1, l2, integer in queries:
        if mechanism == "laplace":
            noisy.append(
                laplace_vector(values, sensitivity=l1, epsilon=eps_q, integer=integer)
            )
        else:
            noisy.append(
                gaussian_vector(
                    values,
                    sensitivity=l2,
                    epsilon=eps_q,
                    delta=delta_q,
                    integer=integer,
                )
            )
    return CohortRelease(
        label_counts=noisy[0],
        centred_sums=noisy[1] * r,
        centred_sq_sums=noisy[2] * r**2,
        midpoint=bounds.midpoint,
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        unit_noise_std=unit_noise_std,
    )


# combine_releases: a standard deviation is never taken below this share of the
# feature's public half-range (noise can drive a released variance to ~0).
MIN_RELATIVE_STD = 0.1


def combine_releases(
    releases: Sequence[CohortRelease],
    *,
    min_relative_std: float = MIN_RELATIVE_STD,
    radius: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine hospitals' releases into global feature means and standard deviations.

    Post-processing (no further privacy cost) that also uses what is public: a mean
    is clipped into the bounds ``midpoint +/- radius`` and a standard deviation into
    ``[floor * radius, radius]`` (no variable bounded by the radius can spread
    wider). ``floor`` is ``min_relative_std`` or, if larger, the square root of the
    noise std of the combined variance estimate (known from the releases' public
    noise scales): a variance below the noise cannot be told from zero, and an
    underestimated spread would blow the feature up. The mean is shrunk towards the
    bounds' midpoint by ``tau^2 / (tau^2 + s^2)``, the posterior mean under a
    prior of variance ``tau^2 = 1/3`` (uniform over the bounds, in half-range
    units) given noise of variance ``s^2``: where the noise dominates, the release
    falls back to the public midpoint. Without ``radius`` only non-negativity is
    enforced.
    """
    if not releases:
        raise ValueError("No releases to combine.")
    mid = releases[0].midpoint
    if any(not np.allclose(r.midpoint, mid) for r in releases):
        raise ValueError("Releases used different feature bounds.")
    n = max(sum(float(r.label_counts.sum()) for r in releases), 1.0)
    s = sum(r.centred_sums for r in releases)
    q = sum(r.centred_sq_sums for r in releases)
    centred_mean = s / n
    var = np.clip(q / n - centred_mean**2, 0.0, None)
    std = np.sqrt(var)
    if radius is not None:
        radius = np.asarray(radius, dtype=float)
        centred_mean = np.clip(centred_mean, -radius, radius)
        var_noise = np.sqrt(sum(r.unit_noise_std**2 for r in releases)) / n
        prior = 1.0 / 3.0
        centred_mean = centred_mean / radius * prior / (prior + var_noise**2) * radius
        floor = min(max(min_relative_std, float(np.sqrt(var_noise))), 1.0)
        std = np.clip(std, floor * radius, radius)
    return mid + centred_mean, np.where(std < 1e-12, 1.0, std)
