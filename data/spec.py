"""Plain data containers shared by every dataset: what a hospital holds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """A hospital's data cannot be used.

    ``str(error)`` is the full message for the hospital's own log (it may name local
    files); ``public_reason`` is what may leave the hospital: no path, no record.
    """

    def __init__(self, message: str, public_reason: str | None = None) -> None:
        super().__init__(message)
        self.public_reason = public_reason or "the hospital's data could not be loaded"


@dataclass(frozen=True)
class DataSpec:
    """Which data to load and how to split it (the data part of the run config)."""

    dataset: str = "wdbc"
    data_path: str = ""
    label_column: str = "target"
    feature_columns: tuple[str, ...] = ()  # csv: declared schema (empty = infer)
    num_classes: int = 0  # csv: declared number of classes (0 = infer)
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 42
    image_size: int = 0  # imaging: resize to this side length; 0 keeps the data's size
    augment: bool = True  # imaging: random flips/affine/intensity on training images
    class_names: tuple[str, ...] = ()  # image folders: fixed class order (else sorted)
    rec_matrix: str = "drugs"  # mimic-demo: "drugs" | "labs" | "diagnoses"
    # recommendation sites: auto | column | users | careunit | admission-location
    site_by: str = "auto"
    # recommendation in deployment: CSV of item ids (and names) every site shares
    item_catalogue: str = ""
    feedback: str = "auto"  # recommendation: auto | explicit | implicit


@dataclass(frozen=True)
class Split:
    """Features and integer labels of one split."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels.")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DatasetInfo:
    """What the server needs to build a model: no data, only its shape."""

    task: str
    input_shape: tuple[int, ...]
    num_classes: int
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    description: str = ""


# HospitalData.extras key of the unstandardised (train, held-out) splits.
RAW_SPLITS = "raw-splits"


@dataclass(frozen=True)
class HospitalData:
    """One hospital's local data: a training split and a local held-out split."""

    name: str
    train: Split
    val: Split
    info: DatasetInfo
    extras: dict[str, object] = field(default_factory=dict)

    def label_counts(self) -> list[int]:
        """Number of training records per class (an aggregate, safe to report)."""
        counts = np.bincount(self.train.y, minlength=self.info.num_classes)
        return [int(c) for c in counts]


@dataclass(frozen=True)
class SiteRecords:
    """Every record one hospital holds (training and held-out), for statistics.

    Tabular ``x`` is ``(N, features)`` and may hold NaN where a value is missing
    (the training loaders drop such rows, these views keep them where the format
    allows); imaging ``x`` is ``(N, C, *spatial)`` in [0, 1]. Never leaves the
    hospital: only aggregates computed from it do (:mod:`app.stats`).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    info: DatasetInfo

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} records but {len(self.y)} labels.")

    def __len__(self) -> int:
        return len(self.y)
