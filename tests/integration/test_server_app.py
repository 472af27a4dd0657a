import json
import logging

import numpy as np
import pytest
from flwr.app import Array, Message
from flwr.clientapp import ClientApp
from support.federation import make_run_config

from app.client_app import app as real_client
from app.server.history import read_history as typed_read_history
from app.server_app import app as server_app
from models.checkpoint import load_model
from scripts.harness.inprocess import run_inprocess


def read_history(tmp_path):
    """The raw history.json, once the typed reader has accepted every key in it."""
    run_dir = tmp_path / "outputs" / "test-run"
    typed_read_history(run_dir)
    return json.loads((run_dir / "history.json").read_text())


@pytest.mark.parametrize("keep_delivered", [True, False])
def test_server_app_writes_history_model_and_latest(tmp_path, keep_delivered):
    run_config = make_run_config(tmp_path, **{"num-server-rounds": 3})
    grid = run_inprocess(
        server_app,
        real_client,
        num_hospitals=3,
        run_config=run_config,
        keep_delivered=keep_delivered,
    )
    # Without keep_delivered the grid holds no message copies, only their sizes.
    # 3 rounds x (train + evaluate) x 3 hospitals, then the decision query to each
    assert len(grid.delivered) == (3 * 3 * 2 + 3 if keep_delivered else 0)
    assert sum(t.direction == "down" for t in grid.traffic) == 3 * 3 * 2 + 3
    history = read_history(tmp_path)
    assert history["status"] == "completed"
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    for entry in history["rounds"][1:]:
        assert set(entry["hospitals"]) == {"hospital-0", "hospital-1", "hospital-2"}
        for metrics in entry["hospitals"].values():
            assert metrics["train"]["num-examples"] > 0
            assert "accuracy" in metrics["evaluate"]
    final = history["rounds"][-1]["server"]
    assert final["accuracy"] > history["rounds"][0]["server"]["accuracy"]
    assert set(final) >= {
        "loss",
        "accuracy",
        "balanced_accuracy",
        "auc",
        "sensitivity",
        "specificity",
    }
    latest = tmp_path / "outputs" / "latest"
    assert latest.is_symlink() and latest.resolve().name == "test-run"
    model, meta = load_model(latest / "final_model.pt")
    assert meta["task"] == "tabular" and meta["model"]["name"] == "logreg"
    assert meta["data"]["input_shape"] == [30]
    assert meta["preprocessing"]["standardize"] == "per-site"
    run_config_json = json.loads((latest / "run_config.json").read_text())
    assert run_config_json["num-server-rounds"] == 3


def nan_poisoning_client(bad_partition: int) -> ClientApp:
    """The real ClientApp, except one hospital answers with NaN weights."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context):
        out = real_client(msg, context)
        if context.node_config["partition-id"] == bad_partition:
            arrays = out.content["arrays"]
            key = next(iter(arrays))
            arrays[key] = Array(np.full(arrays[key].shape, np.nan, dtype=np.float32))
        return out

    @app.evaluate()
    def evaluate(msg: Message, context):
        return real_client(msg, context)

    return app


def test_nan_reply_is_dropped_with_hospital_named_and_round_completes(tmp_path, caplog):
    run_config = make_run_config(tmp_path, **{"num-server-rounds": 2})
    with caplog.at_level(logging.WARNING):
        run_inprocess(
            server_app, nan_poisoning_client(1), num_hospitals=3, run_config=run_config
        )
    assert "dropped the reply of hospital hospital-1" in caplog.text
    history = read_history(tmp_path)
    assert history["status"] == "completed"
    for entry in history["rounds"][1:]:
        assert "NaN" in entry["rejected"]["hospital-1"]["reason"]
        assert set(entry["hospitals"]) >= {"hospital-0", "hospital-2"}
        assert np.isfinite(entry["server"]["loss"])
    assert history["rounds"][-1]["server"]["accuracy"] > 0.9


def test_fedprox_run_completes(tmp_path):
    run_config = make_run_config(
        tmp_path, **{"num-server-rounds": 2, "strategy": "fedprox", "proximal-mu": 0.1}
    )
    run_inprocess(server_app, real_client, num_hospitals=2, run_config=run_config)
    assert read_history(tmp_path)["strategy"] == "fedprox"


def test_bad_config_fails_before_any_round(tmp_path):
    run_config = make_run_config(tmp_path, **{"learning-rate": -1.0})
    with pytest.raises(ValueError, match="learning-rate"):
        run_inprocess(server_app, real_client, num_hospitals=2, run_config=run_config)
    assert not (tmp_path / "outputs").exists()
