"""What a hospital sends back to a statistics query, as typed records.

Each record is flat (numbers, lists of numbers and flags), so it travels as one
Flower ``ConfigRecord``. A cell the hospital suppressed is sent as 0 with its
``*_shown`` flag false: the true value never leaves the hospital. A site that
suppressed everything sends its name and ``suppressed = true`` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from app.stats.query import StatsQuery


class ReleaseError(ValueError):
    """A hospital's reply does not hold a well-formed release."""


@dataclass(frozen=True)
class SiteRelease:
    """Fields every release has: the site, its record count, the protection."""

    site: str
    suppressed: bool  # the whole site: fewer records than the minimum
    records: float  # noisy under DP; 0 when suppressed
    noise: str

    # field -> the dimensions of its shape ("classes", "features", "bins", "dims")
    SHAPES: ClassVar[dict[str, tuple[str, ...]]] = {}

    def to_record(self) -> dict[str, Any]:
        """ConfigRecord values (numpy arrays become lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            key = f.name.replace("_", "-")
            if isinstance(value, np.ndarray):
                value = [v.item() for v in value.reshape(-1)]
            out[key] = value
        return out

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], sizes: Mapping[str, int]
    ) -> SiteRelease:
        """Decode and check a reply against the sizes the query implies."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in record:
                raise ReleaseError(f"no '{key}'")
            values[f.name] = record[key]
        if values["suppressed"]:
            return cls.empty(str(values["site"]), str(values["noise"]), sizes)
        for name, dims in cls.SHAPES.items():
            shape = tuple(sizes.get(d, len(values[name])) for d in dims)
            array = np.asarray(values[name], dtype=_dtype(name)).reshape(-1)
            if array.size != math.prod(shape):
                raise ReleaseError(f"'{name}' must hold {math.prod(shape)} values")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ReleaseError(f"'{name}' holds a non-finite value")
            values[name] = array.reshape(shape)
        return cls(**values)

    @classmethod
    def empty(cls, site: str, noise: str, sizes: Mapping[str, int]) -> SiteRelease:
        """The release of a site that suppressed everything."""
        arrays = {
            name: np.zeros(tuple(sizes.get(d, 0) for d in dims), dtype=_dtype(name))
            for name, dims in cls.SHAPES.items()
        }
        return cls(site=site, suppressed=True, records=0.0, noise=noise, **arrays)


def _dtype(name: str) -> type:
    return bool if name.endswith("shown") else float


@dataclass(frozen=True)
class RangeRelease(SiteRelease):
    """Stage ``ranges``: each feature's extremes, to agree on histogram edges."""

    shown: np.ndarray  # per feature: False = suppressed (count below the minimum)
    minima: np.ndarray
    maxima: np.ndarray

    SHAPES: ClassVar[dict[str, tuple[str, ...]]] = {
        "shown": ("features",),
        "minima": ("features",),
        "maxima": ("features",),
    }


@dataclass(frozen=True)
class TabularRelease(SiteRelease):
    """Stage ``summary`` of tabular data, over the query's histogram edges.

    Sums are of ``x - midpoint`` (clipped to the edges' range under DP), so a
    missing value adds nothing and the sites' sums add up exactly.
    """

    label_counts: np.ndarray
    label_shown: np.ndarray
    shown: np.ndarray
    counts: np.ndarray  # non-missing values per feature
    missing: np.ndarray
    centred_sums: np.ndarray
    centred_sq_sums: np.ndarray
    minima: np.ndarray  # NaN-free: 0 where unknown (under DP: not released)
    maxima: np.ndarray
    histograms: np.ndarray
    midpoint: np.ndarray

    SHAPES: ClassVar[dict[str, tuple[str, ...]]] = {
        "label_counts": ("classes",),
        "label_shown": ("classes",),
        "shown": ("features",),
        "counts": ("features",),
        "missing": ("features",),
        "centred_sums": ("features",),
        "centred_sq_sums": ("features",),
        "minima": ("features",),
        "maxima": ("features",),
        "histograms": ("features", "bins"),
        "midpoint": ("features",),
    }


@dataclass(frozen=True)
class ImageRelease(SiteRelease):
    """Stage ``summary`` of images: labels, intensity histogram, image shape.

    ``intensity`` sums each image's own intensity distribution over the bins
    (each image adds 1 in total, whatever its size); ``shape`` is the
    ``(C, *spatial)`` all of the site's images share.
    """

    label_counts: np.ndarray
    label_shown: np.ndarray
    intensity: np.ndarray
    shape: np.ndarray

    SHAPES: ClassVar[dict[str, tuple[str, ...]]] = {
        "label_counts": ("classes",),
        "label_shown": ("classes",),
        "intensity": ("bins",),
        "shape": ("dims",),
    }


def release_class(query: StatsQuery) -> type[SiteRelease]:
    """The record type that answers ``query``."""
    if query.stage == "ranges":
        return RangeRelease
    return TabularRelease if query.task == "tabular" else ImageRelease


def expected_sizes(query: StatsQuery, num_features: int) -> dict[str, int]:
    """The sizes a reply to ``query`` must have (``dims`` is free)."""
    return {
        "classes": query.num_classes,
        "features": num_features,
        "bins": query.bins,
    }
