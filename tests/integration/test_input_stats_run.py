"""A ``shape`` federation: hospitals' descriptor sums pooled before round 1."""

from __future__ import annotations

import json

import pytest
from support.federation import make_run_config
from support.imaging import write_medmnist

from app.client_app import app as client_app
from app.config import RunConfig
from app.server_app import app as server_app
from data.registry import get_dataset
from models.checkpoint import load_model
from models.shape import descriptor_sums, pooled_statistics
from scripts.harness.inprocess import run_inprocess

HOSPITALS = 3


def _run_config(tmp_path, **overrides):
    data = write_medmnist(tmp_path / "volumes.npz", shape=(10, 10, 10))
    return make_run_config(
        tmp_path,
        **{
            "task": "imaging",
            "dataset": "medmnist",
            "data-path": str(data),
            "model": "shape",
            "num-server-rounds": 2,
            "min-hospitals": HOSPITALS,
            "round-timeout": 5.0,
            "wait-for-hospitals": 0.0,
            **overrides,
        },
    )


def _pooled(run_config, names=range(HOSPITALS)):
    dataset = get_dataset(RunConfig.from_run_config(run_config).data_spec())
    sums = [descriptor_sums(dataset.hospital(i, HOSPITALS).train.x) for i in names]
    count = sum(s[0] for s in sums)
    total, sq = sum(s[1] for s in sums), sum(s[2] for s in sums)
    return count, *pooled_statistics(count, total, sq)


def test_the_model_carries_the_pooled_statistics_of_every_hospital(tmp_path):
    run_config = _run_config(tmp_path)
    grid = run_inprocess(
        server_app, client_app, num_hospitals=HOSPITALS, run_config=run_config
    )
    asked = [m.metadata.message_type for m in grid.delivered]
    queries = [t for t in asked if t == "query.input_stats"]
    assert len(queries) == HOSPITALS  # asked once, before round 1
    run_dir = tmp_path / "outputs" / "test-run"
    history = json.loads((run_dir / "history.json").read_text())
    assert history["status"] == "completed"
    # imaging's default preset: the server's Adam must not step the statistics
    assert history["strategy"] == "fedadam"
    count, mean, std = _pooled(run_config)
    stats = history["input_statistics"]
    assert stats["records"] == count and len(stats["released"]) == HOSPITALS
    assert stats["mean"] == pytest.approx(mean.tolist(), rel=1e-9)
    model, _ = load_model(run_dir / "final_model.pt")
    # never trained: after two rounds the model holds the pooled values (float32)
    assert model.descriptors.mean.numpy() == pytest.approx(mean, rel=1e-6, abs=1e-7)
    assert model.descriptors.scale.numpy() == pytest.approx(std, rel=1e-6)


def test_a_hospital_below_its_minimum_is_left_out_and_named(tmp_path):
    run_config = _run_config(tmp_path, **{"min-hospitals": 2})
    node_configs = [
        {"partition-id": i, "num-partitions": HOSPITALS, "min-records": m}
        for i, m in enumerate((0, 0, 10_000))
    ]
    run_inprocess(
        server_app,
        client_app,
        num_hospitals=HOSPITALS,
        run_config=run_config,
        node_configs=node_configs,
    )
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    stats = history["input_statistics"]
    assert len(stats["released"]) == 2 and len(stats["failed"]) == 1
    count, mean, _ = _pooled(run_config, names=(0, 1))
    assert stats["records"] == count
    assert stats["mean"] == pytest.approx(mean.tolist(), rel=1e-9)
