import numpy as np
import pytest

from data import partition
from data.partition import partition_indices, partition_of, stratified_split
from data.spec import DataError

LABELS = np.array([0] * 120 + [1] * 80)


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
@pytest.mark.parametrize("n", [2, 5])
def test_every_index_exactly_once(method, n):
    parts = partition_indices(LABELS, n, method=method, alpha=0.5, seed=1)
    assert len(parts) == n
    merged = np.concatenate(parts)
    assert sorted(merged.tolist()) == list(range(len(LABELS)))
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_partitions_are_deterministic_and_seeded(method):
    a = partition_indices(LABELS, 4, method=method, alpha=0.5, seed=7)
    b = partition_indices(LABELS, 4, method=method, alpha=0.5, seed=7)
    c = partition_indices(LABELS, 4, method=method, alpha=0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skews_labels_more_than_iid():
    def spread(method):
        parts = partition_indices(LABELS, 5, method=method, alpha=0.3, seed=3)
        return np.std([LABELS[p].mean() for p in parts])

    assert spread("dirichlet") > spread("iid")


def test_too_many_hospitals_is_a_clear_error():
    with pytest.raises(DataError, match="Cannot split 200 records across 500"):
        partition_indices(LABELS, 500, method="iid", alpha=0.5, seed=0)


def test_stratified_split_keeps_prevalence_and_covers_all():
    keep, out = stratified_split(LABELS, 0.25, seed=0)
    assert len(out) == 50 and len(keep) == 150
    assert set(keep).isdisjoint(out)
    assert LABELS[out].mean() == pytest.approx(LABELS.mean(), abs=0.02)


def test_split_is_computed_once_per_process_and_read_only(monkeypatch):
    calls = []
    real = partition.PARTITIONERS["dirichlet"]

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setitem(partition.PARTITIONERS, "dirichlet", counting)
    labels = np.arange(200) % 3  # labels no other test uses: not memoised yet
    first = partition_indices(labels, 4, method="dirichlet", alpha=0.5, seed=11)
    again = partition_of(labels, 2, 4, method="dirichlet", alpha=0.5, seed=11)
    np.testing.assert_array_equal(again, first[2])
    assert len(calls) == 1  # every hospital's later call reuses the split
    with pytest.raises(ValueError, match="read-only"):
        first[0][0] = 0
    # Other labels, or another seed, are a different split.
    partition_indices(labels[::-1], 4, method="dirichlet", alpha=0.5, seed=11)
    partition_indices(labels, 4, method="dirichlet", alpha=0.5, seed=12)
    assert len(calls) == 3


@pytest.mark.parametrize("n,k", [(200, 7), (10, 10), (1003, 100)])
def test_iid_shards_are_flwr_datasets_iid_partitions(n, k):
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    order = np.random.default_rng(4).permutation(n)
    reference = IidPartitioner(num_partitions=k)
    reference.dataset = Dataset.from_dict({"index": order.tolist()})
    ours = partition.ContiguousShards(order, k)
    for i in range(k):
        want = reference.load_partition(i)["index"]
        np.testing.assert_array_equal(ours.load_partition(i)["index"], want)


def test_iid_partitions_need_no_hugging_face_datasets(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import fails
    labels = np.arange(301) % 2  # not memoised by another test
    parts = partition_indices(labels, 3, method="iid", alpha=0.5, seed=2)
    assert [len(p) for p in parts] == [101, 100, 100]


def test_stratified_split_draws_scikit_learns_split():
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(0)
    checked = 0
    for case in range(60):  # sizes, class counts (ties too), fractions, seeds
        n = int(rng.integers(4, 400))
        labels = rng.integers(0, int(rng.integers(1, 6)), n)
        if case % 5 == 0:
            labels = np.repeat(np.arange(3), n // 3 + 1)[:n]  # tied class counts
        fraction, seed = float(rng.uniform(0.05, 0.6)), int(rng.integers(0, 2**31))
        try:
            keep, out = stratified_split(labels, fraction, seed)
        except DataError:
            continue
        _, counts = np.unique(labels, return_counts=True)
        n_out = max(1, int(round(fraction * n)))
        strat = labels if len(counts) > 1 and counts.min() >= 2 else None
        strat = None if n_out < len(counts) else strat
        want_keep, want_out = train_test_split(
            np.arange(n), test_size=n_out, random_state=seed, stratify=strat
        )
        np.testing.assert_array_equal(keep, np.sort(want_keep))
        np.testing.assert_array_equal(out, np.sort(want_out))
        checked += 1
    assert checked > 50
