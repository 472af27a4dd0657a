"""Server-side weight averaging (run config ``model-ema``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MessageType
from support.federation import make_run_config

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.server.averaging import ModelEMA
from app.server.checkpoints import list_checkpoints, load_checkpoint
from app.server_app import app as server_app
from data.registry import get_dataset
from models.checkpoint import load_model
from models.training import evaluate_split
from scripts.harness.inprocess import run_inprocess


def record(value: float) -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(np.full((2, 3), value, dtype=np.float32)),
            "count": Array(np.array([int(value)], dtype=np.int64)),
        }
    )


def test_average_follows_the_warmed_up_decay() -> None:
    values = [1.0, 5.0, -2.0, 7.0, 3.0, 11.0, 0.0, 4.0, 9.0, -6.0, 2.0, 8.0]
    ema = ModelEMA(0.6)
    for v in values:
        model = ema.update(record(v))
    # by hand: the normalised exponential weights 0.6 ** (age in rounds)
    weights = [0.6 ** (len(values) - 1 - i) for i in range(len(values))]
    expected = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    w = model["w"].numpy()
    assert w.dtype == np.float32 and w.shape == (2, 3)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert expected != pytest.approx(values[-1])
    # integer arrays (counters) are the latest round's, never averaged
    assert model["count"].numpy().tolist() == [8]


def test_off_returns_the_global_arrays_themselves() -> None:
    ema = ModelEMA(0.0)
    arrays = record(3.0)
    assert ema.update(arrays) is arrays and ema.model(arrays) is arrays
    assert ema.state_dict()["average"] == {}


def test_state_round_trip_continues_identically() -> None:
    a, b = ModelEMA(0.9), ModelEMA(0.9)
    for v in (1.0, 2.0, 4.0):
        a.update(record(v))
    b.load_state_dict(a.state_dict())
    for v in (8.0, -1.0):
        out_a, out_b = a.update(record(v)), b.update(record(v))
        assert np.array_equal(out_a["w"].numpy(), out_b["w"].numpy())


def test_changed_arrays_are_refused() -> None:
    ema = ModelEMA(0.9)
    ema.update(record(1.0))
    with pytest.raises(ValueError, match="model-ema.*changed"):
        ema.update(ArrayRecord({"w": Array(np.zeros((2, 3), dtype=np.float32))}))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_out_of_range_decay_is_refused_by_name(bad: float) -> None:
    with pytest.raises(ConfigError, match="model-ema"):
        RunConfig.from_run_config({"model-ema": bad})


def test_vertical_runs_refuse_model_ema() -> None:
    with pytest.raises(ConfigError, match="'model-ema'.*task='vertical'"):
        RunConfig.from_run_config({"task": "vertical", "model-ema": 0.9})


def test_run_saves_evaluates_and_checkpoints_the_average(tmp_path) -> None:
    rounds = 3
    config = make_run_config(
        tmp_path,
        **{"num-server-rounds": rounds, "model-ema": 0.7, "checkpoint-keep": 3},
    )
    grid = run_inprocess(server_app, client_app, num_hospitals=2, run_config=config)
    run_dir = tmp_path / "outputs" / "test-run"
    # recompute the average from the raw global arrays of each round's checkpoint
    checkpoints = [
        load_checkpoint(p) for p in list_checkpoints(run_dir / "checkpoints")
    ]
    assert [c.server_round for c in checkpoints] == [1, 2, 3]
    ema = ModelEMA(0.7)
    for c in checkpoints:
        expected = ema.update(c.arrays).to_torch_state_dict()
    model, payload = load_model(run_dir / "final_model.pt")
    saved = payload["state_dict"]
    raw = checkpoints[-1].arrays.to_torch_state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.allclose(saved[k], expected[k], atol=1e-7) for k in saved)
    assert not all(torch.equal(saved[k], raw[k]) for k in saved)  # not the last round's
    # the hospitals evaluated the average, and trained from the raw global arrays
    last = [
        m
        for m in grid.delivered
        if m.content["config"].get("server-round") == rounds  # not the decision query
    ]
    sent = {
        m.metadata.message_type: m.content["arrays"].to_torch_state_dict() for m in last
    }
    assert all(torch.equal(sent[MessageType.EVALUATE][k], saved[k]) for k in saved)
    before = checkpoints[-2].arrays.to_torch_state_dict()
    assert all(torch.equal(sent[MessageType.TRAIN][k], before[k]) for k in saved)
    # so did the server: its last-round test loss is the saved model's
    cfg = RunConfig.from_run_config(config)
    test = get_dataset(cfg.data_spec()).server_test()
    loss = evaluate_split(model, test, torch.device("cpu"))["loss"]
    history = json.loads((run_dir / "history.json").read_text())
    assert history["rounds"][-1]["server"]["loss"] == pytest.approx(loss, rel=1e-5)
    # the last checkpoint carries the average, for a resume
    stored = checkpoints[-1].averaging_state
    assert stored["updates"] == rounds
    assert all(np.allclose(stored["average"][k], saved[k].numpy()) for k in saved)
