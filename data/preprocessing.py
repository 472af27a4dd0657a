"""Feature standardisation: per site (own statistics) or global (one transform).

``per-site``: each hospital (and the server, for its own held-out set) fits a
:class:`Standardizer` on its own training data. ``dp-global``: every site applies
one global :class:`Standardizer` the server combined from the hospitals'
differentially private cohort statistics (:mod:`app.privacy.cohort_stats`).
``public-bounds``: every site maps each feature from the dataset's public a-priori
bounds onto [-1, 1] (:meth:`Standardizer.from_bounds`): no statistic of any
hospital's data is used, so nothing is released and no epsilon is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Run-config ``normalisation`` -> how the server builds the one transform every
# site then applies ("module:function", imported by the server only), or None where
# each site fits its own. The server side lives with the privacy code because
# ``dp-global`` releases DP statistics.
NORMALISATIONS: dict[str, str | None] = {
    "per-site": None,
    "dp-global": "app.privacy.cohort_stats:harmonise",
    "public-bounds": "app.privacy.cohort_stats:public_bounds",
}
# The modes in which every site applies one transform the server sends.
GLOBAL_NORMALISATIONS = tuple(name for name, how in NORMALISATIONS.items() if how)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and scale of one site's training data.

    These statistics never leave the site: each hospital (and the server, for its
    own held-out set) standardises with its own values. Constant features get a
    scale of 1 so they map to zero instead of dividing by zero.
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale < 1e-12, 1.0, scale)
        return cls(mean=mean, scale=scale)

    @classmethod
    def from_bounds(cls, lower: np.ndarray, upper: np.ndarray) -> Standardizer:
        """The affine map of ``[lower, upper]`` onto ``[-1, 1]``, feature by feature.

        Values outside the bounds map outside [-1, 1] (nothing is clipped): the
        bounds fix the scale, they do not censor the data.
        """
        lower, upper = np.asarray(lower, float), np.asarray(upper, float)
        if lower.shape != upper.shape or not np.all(upper > lower):
            raise ValueError("bounds need equal shapes with upper > lower.")
        return cls(mean=(lower + upper) / 2, scale=(upper - lower) / 2)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale).astype(
            np.float32
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (for a message's ConfigRecord or a model file)."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.scale],
        }

    @classmethod
    def from_dict(cls, values: Any) -> Standardizer:
        """Inverse of :meth:`to_dict`; refuses non-finite or non-positive scales."""
        mean = np.asarray(values["mean"], dtype=np.float64)
        scale = np.asarray(values["std"], dtype=np.float64)
        if mean.shape != scale.shape or mean.ndim != 1:
            raise ValueError("mean and std must be 1-D lists of equal length.")
        if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
            raise ValueError("mean and std must be finite.")
        if not (scale > 0).all():
            raise ValueError("std must be > 0 for every feature.")
        return cls(mean=mean, scale=scale)
