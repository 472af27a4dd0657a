"""The ClientApp's per-process caches: reused within a run, never across hospitals
or runs (app/client/cache.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from support.federation import make_message, make_run_config

from app.client import cache
from app.client.hospital import load_hospital, model_spec
from app.client_app import app as client_app
from app.config import RunConfig


@pytest.fixture(autouse=True)
def empty_caches():
    for c in (cache.RUN_CONFIGS, cache.HOSPITALS, cache.MODELS):
        c.clear()
    yield
    for c in (cache.RUN_CONFIGS, cache.HOSPITALS, cache.MODELS):
        c.clear()


def _context(run_id: int, run_config: dict, partition_id: int, n: int = 4) -> Context:
    return Context(
        run_id=run_id,
        node_id=101 + partition_id,
        node_config={"partition-id": partition_id, "num-partitions": n},
        state=RecordDict(),
        run_config=run_config,
    )


def _same(a, b) -> bool:
    return all(
        np.array_equal(x, y)
        for x, y in ((a.train.x, b.train.x), (a.train.y, b.train.y), (a.val.x, b.val.x))
    )


def _global_model(run_config: dict) -> torch.nn.Module:
    cfg = RunConfig.from_run_config(run_config)
    site = load_hospital(cfg, {"partition-id": 0, "num-partitions": 4})
    torch.manual_seed(0)
    return model_spec(cfg, site.info).build()


def test_two_hospitals_of_one_process_get_their_own_data(tmp_path, task_identity):
    run_config = make_run_config(tmp_path)
    model = _global_model(run_config)
    cfg = RunConfig.from_run_config(run_config)
    cache.HOSPITALS.clear()  # earlier tests of this process may have used run 7
    hits = cache.HOSPITALS.hits
    for round_ in (1, 2):  # the second round is served from the cache
        for pid in (0, 1):
            msg = make_message(model, config={"server-round": round_})
            reply = client_app(msg, _context(7, run_config, pid))
            assert not reply.has_error()
            own = load_hospital(cfg, {"partition-id": pid, "num-partitions": 4})
            assert reply.content["metrics"]["num-examples"] == len(own.train)
            assert reply.content["hospital"]["name"] == f"hospital-{pid}"
    assert len(cache.HOSPITALS) == 2 and cache.HOSPITALS.hits == hits + 2
    zero = cache.hospital(7, cfg, {"partition-id": 0, "num-partitions": 4})
    one = cache.hospital(7, cfg, {"partition-id": 1, "num-partitions": 4})
    assert not set(zero.train.x[:, 0]) & set(one.train.x[:, 0])  # disjoint records
    fresh = load_hospital(cfg, {"partition-id": 1, "num-partitions": 4})
    assert _same(one, fresh)
    # Another hospital name on the same partition is another entry.
    named = {"partition-id": 1, "num-partitions": 4, "hospital-name": "north"}
    assert cache.hospital(7, cfg, named).name == "north"
    assert cache.hospital(7, cfg, {"partition-id": 1, "num-partitions": 4}) is one


def test_a_second_run_with_another_seed_gets_other_partitions(tmp_path, task_identity):
    first = make_run_config(tmp_path, seed=42)
    second = make_run_config(tmp_path, seed=43)
    node = {"partition-id": 0, "num-partitions": 4}
    a = cache.hospital(1, cache.run_config(1, first), node)
    b = cache.hospital(2, cache.run_config(2, second), node)
    assert not _same(a, b)
    assert _same(b, load_hospital(RunConfig.from_run_config(second), node))
    # The first run's entries are gone once the second run's message arrives.
    assert len(cache.HOSPITALS) == 1 and len(cache.RUN_CONFIGS) == 1
    model = _global_model(second)
    reply = client_app(make_message(model), _context(2, second, 0))
    assert reply.content["metrics"]["num-examples"] == len(b.train)


def test_an_edited_data_file_is_read_again(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.csv"

    def write(rows: int) -> None:
        x = rng.normal(size=(rows, 3))
        lines = ["a,b,c,target"] + [
            f"{r[0]},{r[1]},{r[2]},{i % 2}" for i, r in enumerate(x)
        ]
        path.write_text("\n".join(lines) + "\n")

    write(60)
    cfg = RunConfig.from_run_config(
        make_run_config(tmp_path, dataset="csv", **{"data-path": str(path)})
    )
    node = {"partition-id": 0, "num-partitions": 2}
    before = cache.hospital(1, cfg, node)
    write(90)
    after = cache.hospital(1, cfg, node)
    assert len(after.train) + len(after.val) > len(before.train) + len(before.val)


def test_model_copies_are_independent_and_caches_stay_bounded(tmp_path):
    cfg = RunConfig.from_run_config(make_run_config(tmp_path))
    site = load_hospital(cfg, {"partition-id": 0, "num-partitions": 2})
    first = cache.model(1, model_spec(cfg, site.info))
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)
    second = cache.model(1, model_spec(cfg, site.info))
    assert len(cache.MODELS) == 1 and second is not first
    assert not any(
        torch.equal(a, b)
        for a, b in zip(first.parameters(), second.parameters(), strict=True)
    )
    # Least recently used entries go past 3 entries or 100 bytes.
    small: cache.RunCache[bytes] = cache.RunCache(3, max_bytes=100, size=len)
    for i in range(5):
        small.get(1, i, lambda i=i: b"x" * (10 * (i + 1)))
    assert len(small) == 2  # 40 + 50 bytes; adding 30 would pass 100
    assert small.get(1, 4, lambda: b"") == b"x" * 50
    assert small.get(1, 0, lambda: b"new") == b"new"  # evicted: made again


def test_run_config_is_parsed_once_per_run_and_config(tmp_path):
    raw = make_run_config(tmp_path, seed=42)
    cfg = cache.run_config(1, raw)
    # An equal config (another dict, other key order) of the same run: the same parse.
    assert cache.run_config(1, dict(reversed(list(raw.items())))) is cfg
    # One value changed: parsed again, and that value is what the new config holds.
    other = cache.run_config(1, {**raw, "seed": 43})
    assert other is not cfg and other.seed == 43 and cfg.seed == 42
    # Another run parses its config afresh even when it is equal.
    assert cache.run_config(2, raw) is not cfg
