"""Split records across simulated hospitals with flwr-datasets partitioners."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from data.spec import DataError

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

# flwr-datasets (and Hugging Face datasets, scipy, seaborn behind it) is imported
# only where a simulation partitions with Dirichlet: a deployed ClientApp starts a
# fresh process per message and never partitions, and these imports cost seconds
# (~2-3 s of CPU) per simulation actor. IID shards need none of it.
# A factory takes (num_partitions, alpha, seed, shuffled record order, labels in
# that order) and returns an object with ``load_partition(i)["index"]``.
PartitionerFactory = Callable[
    [int, float, int, np.ndarray, np.ndarray], "Partitioner | ContiguousShards"
]


@dataclass(frozen=True)
class ContiguousShards:
    """flwr-datasets' ``IidPartitioner`` over a shuffled order, in numpy alone.

    ``IidPartitioner`` takes Hugging Face's ``Dataset.shard(n, i, contiguous=True)``:
    the first ``len % n`` shards hold one record more. The same slices here
    (``tests/unit/test_partition.py`` checks them against flwr-datasets).
    """

    order: np.ndarray
    num_partitions: int

    @property
    def dataset(self) -> np.ndarray:
        return self.order

    def load_partition(self, partition_id: int) -> dict[str, np.ndarray]:
        div, mod = divmod(len(self.order), self.num_partitions)
        start = div * partition_id + min(partition_id, mod)
        end = start + div + (1 if partition_id < mod else 0)
        return {"index": self.order[start:end]}


def _iid(
    num_partitions: int, alpha: float, seed: int, order: np.ndarray, labels: np.ndarray
) -> ContiguousShards:
    del alpha, seed, labels
    # IID slices in order; records are shuffled beforehand (seeded).
    return ContiguousShards(order, num_partitions)


def _dirichlet(
    num_partitions: int, alpha: float, seed: int, order: np.ndarray, labels: np.ndarray
) -> Partitioner:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    n = len(order)
    # A small floor keeps tiny datasets partitionable while still refusing empty
    # hospitals; flwr-datasets retries the draw until every hospital reaches it.
    floor = max(2, min(10, n // (10 * num_partitions)))
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=floor,
        self_balancing=True,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = Dataset.from_dict(
        {"index": order.tolist(), "label": labels.tolist()}
    )
    return partitioner


PARTITIONERS: dict[str, PartitionerFactory] = {"iid": _iid, "dirichlet": _dirichlet}


def _check_split(method: str, n: int, num_partitions: int) -> None:
    if method not in PARTITIONERS:
        raise ValueError(
            f"Unknown partitioner {method!r}; known: {sorted(PARTITIONERS)}"
        )
    if num_partitions < 1 or num_partitions > n:
        raise DataError(
            f"Cannot split {n} records across {num_partitions} hospitals.",
            "too many hospitals for the dataset size",
        )


@dataclass
class _Split:
    """A split's flwr-datasets partitioner and the partitions loaded so far."""

    partitioner: Partitioner | ContiguousShards
    method: str
    num_partitions: int
    parts: dict[int, np.ndarray] = field(default_factory=dict)

    def partition(self, partition_id: int) -> np.ndarray:
        """One partition's record indices (read-only), computed alone.

        flwr-datasets loads a partition without materialising the others (IID: a
        contiguous shard; Dirichlet: a select from the one assignment it draws
        on the first call).
        """
        if partition_id not in self.parts:
            try:
                with warnings.catch_warnings():
                    # flwr-datasets warns on every Dirichlet redraw: only the outcome
                    # counts.
                    warnings.simplefilter("ignore", UserWarning)
                    rows = self.partitioner.load_partition(partition_id)["index"]
            except ValueError as err:
                n = len(self.partitioner.dataset)
                raise DataError(
                    f"The {self.method} partitioner could not split {n} records "
                    f"across {self.num_partitions} hospitals: {err}",
                    "the dataset could not be partitioned",
                ) from err
            part = np.asarray(rows, dtype=np.int64)
            part.flags.writeable = False
            self.parts[partition_id] = part
        return self.parts[partition_id]


@functools.lru_cache(maxsize=16)
def _split(
    label_bytes: bytes,
    dtype: str,
    num_partitions: int,
    method: str,
    alpha: float,
    seed: int,
) -> _Split:
    """The partitioner of one split, over seeded-shuffled records.

    Memoised per process: a simulated hospital process serves many partitions of
    one split. The key is every input of the split, so other labels, another seed
    or another method never reuse it.
    """
    labels = np.frombuffer(label_bytes, dtype=np.dtype(dtype))
    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = PARTITIONERS[method](
        num_partitions, alpha, seed, order, labels[order]
    )
    return _Split(partitioner, method, num_partitions)


def partition_of(
    labels: np.ndarray,
    partition_id: int,
    num_partitions: int,
    *,
    method: str,
    alpha: float,
    seed: int,
) -> np.ndarray:
    """Return hospital ``partition_id``'s record indices (a read-only array).

    The result depends only on the arguments, so every simulated hospital computes
    the same split independently; only this partition is loaded.
    """
    labels = np.ascontiguousarray(labels)
    _check_split(method, len(labels), num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise DataError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1}.",
            "invalid partition-id",
        )
    split = _split(
        labels.tobytes(), labels.dtype.str, num_partitions, method, alpha, seed
    )
    return split.partition(partition_id)


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    *,
    method: str,
    alpha: float,
    seed: int,
) -> list[np.ndarray]:
    """Return, for each hospital, the indices of its records (read-only arrays).

    Every index appears in exactly one partition. For views of the whole split
    (label distributions, tests); a hospital asks for its own with
    :func:`partition_of`.
    """
    _check_split(method, len(labels), num_partitions)
    return [
        partition_of(labels, i, num_partitions, method=method, alpha=alpha, seed=seed)
        for i in range(num_partitions)
    ]


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """scikit-learn's ``utils.extmath._approximate_mode``: draws per class, ties
    broken with ``rng``.
    """
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _shuffle_split(
    labels: np.ndarray, n_test: int, seed: int, *, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The (train, test) index sets of scikit-learn's ``train_test_split(...,
    test_size=n_test, random_state=seed, shuffle=True, stratify=labels or None)``.

    The same draws from the same ``RandomState`` (``StratifiedShuffleSplit`` /
    ``ShuffleSplit``), each set returned sorted; ``tests/unit/test_partition.py``
    compares them with scikit-learn's. Why not scikit-learn itself: importing it
    (with SciPy) costs ~2 s of CPU in every simulation actor and, in a
    deployment, on every message (a fresh process each).
    """
    n = len(labels)
    rng = np.random.RandomState(seed)
    if not stratify:
        permutation = rng.permutation(n)
        return np.sort(permutation[n_test:]), np.sort(permutation[:n_test])
    _, y_indices, class_counts = np.unique(
        labels, return_inverse=True, return_counts=True
    )
    if n - n_test < len(class_counts) or n_test < len(class_counts):
        raise ValueError(
            f"{n - n_test} training and {n_test} held-out records cannot hold "
            f"each of {len(class_counts)} classes."
        )
    class_indices = np.split(
        np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1]
    )
    n_i = _approximate_mode(class_counts, n - n_test, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for i, count in enumerate(class_counts):
        members = class_indices[i].take(rng.permutation(count), mode="clip")
        train.append(members[: n_i[i]])
        test.append(members[n_i[i] : n_i[i] + t_i[i]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (keep, held_out), stratified when possible."""
    n = len(labels)
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
    return _shuffle_split(labels, n_out, seed, stratify=strat is not None)
