"""Split records across simulated hospitals with flwr-datasets partitioners."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import train_test_split

from data.spec import DataError

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

# flwr-datasets (and Hugging Face datasets, scipy, seaborn behind it) is imported
# only where a simulation partitions: a deployed ClientApp starts a fresh process
# per message and never partitions, and these imports cost seconds per start.
PartitionerFactory = Callable[[int, float, int, int], "Partitioner"]


def _iid(num_partitions: int, alpha: float, seed: int, n: int) -> Partitioner:
    from flwr_datasets.partitioner import IidPartitioner

    del alpha, n
    # IidPartitioner slices in order; records are shuffled beforehand (seeded).
    return IidPartitioner(num_partitions=num_partitions)


def _dirichlet(num_partitions: int, alpha: float, seed: int, n: int) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner

    # A small floor keeps tiny datasets partitionable while still refusing empty
    # hospitals; flwr-datasets retries the draw until every hospital reaches it.
    floor = max(2, min(10, n // (10 * num_partitions)))
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=floor,
        self_balancing=True,
        shuffle=True,
        seed=seed,
    )


PARTITIONERS: dict[str, PartitionerFactory] = {"iid": _iid, "dirichlet": _dirichlet}


def _load_partitions(
    labels: np.ndarray,
    num_partitions: int,
    wanted: list[int],
    *,
    method: str,
    alpha: float,
    seed: int,
) -> list[np.ndarray]:
    if method not in PARTITIONERS:
        raise ValueError(
            f"Unknown partitioner {method!r}; known: {sorted(PARTITIONERS)}"
        )
    n = len(labels)
    if num_partitions < 1 or num_partitions > n:
        raise DataError(
            f"Cannot split {n} records across {num_partitions} hospitals.",
            "too many hospitals for the dataset size",
        )
    from datasets import Dataset

    order = np.random.default_rng(seed).permutation(n)
    table = Dataset.from_dict(
        {"index": order.tolist(), "label": np.asarray(labels)[order].tolist()}
    )
    partitioner = PARTITIONERS[method](num_partitions, alpha, seed, n)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            # flwr-datasets warns on every Dirichlet redraw; only the outcome counts.
            warnings.simplefilter("ignore", UserWarning)
            parts = [
                np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)
                for i in wanted
            ]
    except ValueError as err:
        raise DataError(
            f"The {method} partitioner could not split {n} records across "
            f"{num_partitions} hospitals: {err}",
            "the dataset could not be partitioned",
        ) from err
    return parts


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    *,
    method: str,
    alpha: float,
    seed: int,
) -> list[np.ndarray]:
    """Return, for each hospital, the indices of its records.

    Every index appears in exactly one partition; the result depends only on the
    arguments, so every simulated hospital computes the same split independently.
    The split is memoised per process (a simulated hospital asks for it on every
    message); the returned arrays are read-only.
    """
    labels = np.ascontiguousarray(labels)
    return list(
        _memoised_partitions(
            labels.tobytes(), labels.dtype.str, num_partitions, method, alpha, seed
        )
    )


@functools.lru_cache(maxsize=16)
def _memoised_partitions(
    label_bytes: bytes,
    dtype: str,
    num_partitions: int,
    method: str,
    alpha: float,
    seed: int,
) -> tuple[np.ndarray, ...]:
    labels = np.frombuffer(label_bytes, dtype=np.dtype(dtype))
    parts = _load_partitions(
        labels,
        num_partitions,
        list(range(num_partitions)),
        method=method,
        alpha=alpha,
        seed=seed,
    )
    for part in parts:
        part.flags.writeable = False
    return tuple(parts)


def partition_of(
    labels: np.ndarray,
    partition_id: int,
    num_partitions: int,
    *,
    method: str,
    alpha: float,
    seed: int,
) -> np.ndarray:
    """One hospital's record indices: ``partition_indices(...)[partition_id]``."""
    return partition_indices(
        labels, num_partitions, method=method, alpha=alpha, seed=seed
    )[partition_id]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (keep, held_out), stratified when possible."""
    n = len(labels)
    idx = np.arange(n)
    n_out = max(1, int(round(fraction * n)))
    if n < 2 or n_out >= n:
        raise DataError(
            f"Only {n} records: too few to hold out a {fraction:.0%} split.",
            "too few records to split",
        )
    _, counts = np.unique(labels, return_counts=True)
    strat = labels if len(counts) > 1 and counts.min() >= 2 else None
    if strat is not None and n_out < len(counts):
        strat = None
    keep, out = train_test_split(
        idx, test_size=n_out, random_state=seed, shuffle=True, stratify=strat
    )
    return np.sort(keep), np.sort(out)
