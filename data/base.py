"""The interface every federated dataset implements, and the pooled-split base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import ClassVar

import numpy as np

from data.partition import partition_of, stratified_split
from data.preprocessing import Standardizer
from data.spec import (
    RAW_SPLITS,
    DataError,
    DatasetInfo,
    DataSpec,
    HospitalData,
    SiteRecords,
    Split,
)


class FederatedDataset(ABC):
    """A dataset as the federation sees it.

    ``hospital`` is the simulation view (hospital ``partition_id`` of
    ``num_partitions``); ``local_hospital`` is the deployment view (a hospital reads
    its own file or folder); ``server_test`` is the held-out set no hospital trains
    on, used for server-side evaluation and by ``medflower evaluate``.
    """

    name: ClassVar[str]
    task: ClassVar[str]
    # Public a-priori range of each feature (a data dictionary, never the data),
    # in ``info().feature_names`` order: needed to release DP feature statistics
    # (run config ``normalisation = "dp-global"``); None = not declared.
    feature_bounds: ClassVar[tuple[tuple[float, float], ...] | None] = None
    needs_path: ClassVar[bool] = False  # whether the run config must give data-path
    # False where evaluation can only be federated (recommenders: the patients'
    # vectors stay at their sites), so the server keeps no test set.
    has_server_test: ClassVar[bool] = True
    shape_hint: ClassVar[str] = (
        "Give the coordinator a 'data-path' (server-eval may stay false)."
    )

    @classmethod
    def shape_known(cls, spec: DataSpec) -> bool:
        """Whether ``info()`` works without any data file.

        A deployed coordinator may hold no data (``server-eval=false``, no
        ``data-path``); it still has to build the model, so the input shape and
        the number of classes must follow from the run config alone.
        """
        return not cls.needs_path

    def __init__(self, spec: DataSpec) -> None:
        self.spec = spec

    @abstractmethod
    def info(self) -> DatasetInfo:
        """Shape of the inputs and number of classes."""

    @abstractmethod
    def hospital(self, partition_id: int, num_partitions: int) -> HospitalData:
        """Hospital ``partition_id``'s data in a simulated federation."""

    def local_hospital(self, path: str, name: str) -> HospitalData:
        """A hospital's own data read from ``path`` (deployment)."""
        raise DataError(
            f"dataset '{self.name}' has no per-hospital files; use a dataset kind "
            "that reads a hospital's own data (heart-disease, csv).",
            f"dataset '{self.name}' cannot be read from a hospital path",
        )

    @abstractmethod
    def server_test(self) -> Split:
        """The held-out evaluation set, standardised as its site would."""

    def raw_server_test(self) -> Split:
        """The held-out evaluation set before any standardisation.

        For global standardisation (``normalisation = "dp-global"``) the server
        applies the federation's statistics to it.
        """
        raise DataError(
            f"dataset '{self.name}' has no unstandardised test set.",
            "no unstandardised test set",
        )

    def hospital_names(self, num_partitions: int) -> list[str]:
        return [f"hospital-{i}" for i in range(num_partitions)]

    def hospital_records(self, partition_id: int, num_partitions: int) -> SiteRecords:
        """Every record of hospital ``partition_id`` in a simulated federation.

        For federated statistics (:mod:`app.stats`); by default the hospital's
        training and held-out splits as loaded, before any standardisation.
        """
        return site_records(self.hospital(partition_id, num_partitions))

    def local_records(self, path: str, name: str) -> SiteRecords:
        """Every record of a deployed hospital's own data at ``path``."""
        return site_records(self.local_hospital(path, name))


def check_partition(partition_id: int, num_partitions: int) -> None:
    if not 0 <= partition_id < num_partitions:
        raise DataError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1}.",
            "invalid partition-id",
        )


# HospitalData.extras key of the unstandardised (train, held-out) splits.
RAW = RAW_SPLITS


def make_local_splits(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    held_out_fraction: float,
    seed: int,
    info: DatasetInfo,
) -> HospitalData:
    """Split one hospital's records into train / held-out and standardise both
    with statistics of the hospital's own training split.

    The unstandardised splits stay in ``extras[RAW]`` (inside the hospital) for
    :func:`standardized` (global statistics) and the DP statistics release.
    """
    if len(y) == 0:
        raise DataError(f"Hospital {name} has no records.", "empty partition")
    keep, out = stratified_split(y, held_out_fraction, seed)
    scaler = Standardizer.fit(x[keep])
    return HospitalData(
        name=name,
        train=Split(scaler.transform(x[keep]), y[keep]),
        val=Split(scaler.transform(x[out]), y[out]),
        info=info,
        extras={RAW: (Split(x[keep], y[keep]), Split(x[out], y[out]))},
    )


def raw_splits(site: HospitalData) -> tuple[Split, Split]:
    """The hospital's training and held-out splits before standardisation."""
    raw = site.extras.get(RAW)
    if raw is None:
        raise DataError(
            f"Hospital {site.name}: its data keep no unstandardised features, so "
            "they cannot be standardised with global statistics.",
            "the hospital's data cannot be standardised with global statistics",
        )
    return raw  # type: ignore[return-value]


def site_records(site: HospitalData) -> SiteRecords:
    """All of ``site``'s records (training + held-out), before standardisation."""
    train, val = site.extras.get(RAW) or (site.train, site.val)  # type: ignore[misc]
    return SiteRecords(
        site.name,
        np.concatenate([np.asarray(train.x), np.asarray(val.x)]),
        np.concatenate([np.asarray(train.y), np.asarray(val.y)]),
        site.info,
    )


def standardized(site: HospitalData, scaler: Standardizer) -> HospitalData:
    """Return ``site`` with both splits standardised by ``scaler`` (global stats)."""
    train, val = raw_splits(site)
    width = site.info.input_shape[0]
    if len(scaler.mean) != width:
        raise DataError(
            f"Hospital {site.name}: global statistics for {len(scaler.mean)} "
            f"features, but its data have {width}.",
            f"global statistics for {len(scaler.mean)} features, data have {width}",
        )
    return HospitalData(
        name=site.name,
        train=Split(scaler.transform(train.x), train.y),
        val=Split(scaler.transform(val.x), val.y),
        info=site.info,
        extras=site.extras,
    )


class PooledTabularDataset(FederatedDataset):
    """One table split into a global test set and IID/Dirichlet hospital shares."""

    task = "tabular"

    @abstractmethod
    def load_table(self) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Return features (float), integer labels and feature names."""

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        return self.load_table()

    @cached_property
    def _pool_and_test(self) -> tuple[np.ndarray, np.ndarray]:
        _, y, _ = self._table
        return stratified_split(y, self.spec.test_fraction, self.spec.seed)

    def info(self) -> DatasetInfo:
        x, y, names = self._table
        return DatasetInfo(
            task="tabular",
            input_shape=(x.shape[1],),
            num_classes=max(2, int(y.max()) + 1),
            feature_names=names,
            description=self.name,
        )

    def hospital(self, partition_id: int, num_partitions: int) -> HospitalData:
        check_partition(partition_id, num_partitions)
        x, y, _ = self._table
        pool, _ = self._pool_and_test
        idx = pool[
            partition_of(
                y[pool],
                partition_id,
                num_partitions,
                method=self.spec.partitioner,
                alpha=self.spec.dirichlet_alpha,
                seed=self.spec.seed,
            )
        ]
        return make_local_splits(
            f"hospital-{partition_id}",
            x[idx],
            y[idx],
            held_out_fraction=self.spec.val_fraction,
            seed=self.spec.seed + 1 + partition_id,
            info=self.info(),
        )

    def server_test(self) -> Split:
        raw = self.raw_server_test()
        # The evaluation site standardises with its own statistics, like a hospital.
        return Split(Standardizer.fit(raw.x).transform(raw.x), raw.y)

    def raw_server_test(self) -> Split:
        x, y, _ = self._table
        _, test = self._pool_and_test
        return Split(x[test], y[test])
