"""Imaging federations end to end: in-process apps and a real flwr run."""

import json

import pytest
from support.federation import REPO, make_run_config
from support.imaging import write_medmnist

from app.client_app import app as client_app
from app.server_app import app as server_app
from models.checkpoint import load_model
from scripts.cli import main
from scripts.flower.driver import run_simulation
from scripts.flower.env import flower_env
from scripts.flower.superlink import superlinks_of
from scripts.harness.inprocess import run_inprocess


def test_inprocess_imaging_run_then_per_site_evaluation(tmp_path, capsys):
    npz = write_medmnist(tmp_path / "tiny.npz", counts=(48, 8, 16))
    run_config = make_run_config(
        tmp_path,
        **{
            "task": "imaging",
            "dataset": "medmnist",
            "data-path": str(npz),
            "num-server-rounds": 2,
            "learning-rate": 0.01,
            "optimizer": "adam",
        },
    )
    run_inprocess(server_app, client_app, num_hospitals=2, run_config=run_config)
    run_dir = tmp_path / "outputs" / "test-run"
    history = json.loads((run_dir / "history.json").read_text())
    assert history["status"] == "completed" and history["model"] == "poolcnn"
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    for entry in history["rounds"][1:]:
        assert set(entry["hospitals"]) == {"hospital-0", "hospital-1"}
        assert {"auc", "accuracy"} <= set(entry["server"])
    model, meta = load_model(run_dir / "final_model.pt")
    assert meta["task"] == "imaging" and meta["model"]["name"] == "poolcnn"
    assert meta["data"]["input_shape"] == [1, 28, 28]
    assert meta["preprocessing"]["layout"].startswith("(C, H, W)")
    # cross-site evaluation finds the run's hospitals in history.json
    assert (
        main(["evaluate", "--model", str(run_dir / "final_model.pt"), "--per-site"])
        == 0
    )
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["hospital-0", "hospital-1"]


def test_hospital_with_other_channels_is_dropped_not_fatal(tmp_path):
    """A deployed hospital whose images do not fit the global model answers with a
    data error; the others still train and the run completes."""
    gray = write_medmnist(tmp_path / "gray.npz", counts=(40, 8, 16))
    rgb = write_medmnist(tmp_path / "rgb.npz", shape=(28, 28, 3), counts=(40, 8, 16))
    run_config = make_run_config(
        tmp_path,
        **{
            "task": "imaging",
            "dataset": "medmnist",
            "data-path": str(gray),
            "num-server-rounds": 1,
            "min-hospitals": 2,
        },
    )
    nodes = [
        {"data-path": str(gray), "hospital-name": "a"},
        {"data-path": str(gray), "hospital-name": "b"},
        {"data-path": str(rgb), "hospital-name": "c"},
    ]
    run_inprocess(
        server_app,
        client_app,
        num_hospitals=3,
        run_config=run_config,
        node_configs=nodes,
    )
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    assert history["status"] == "completed"
    last = history["rounds"][-1]
    assert set(last["hospitals"]) == {"a", "b"}
    reason = next(iter(last["errors"].values()))["reason"]
    assert "input shape (3, 28, 28) does not match the model's (1, 28, 28)" in reason
    assert "rgb.npz" not in reason


@pytest.mark.slow
def test_flwr_run_imaging_two_rounds(tmp_path):
    env = flower_env(tmp_path / "flwr-home")
    outputs = tmp_path / "outputs"
    outcome = run_simulation(
        app_dir=REPO,
        num_hospitals=2,
        run_config=(
            f"task='imaging' dataset='synthetic-lesions' num-server-rounds=2 "
            f"output-dir='{outputs}' run-name='img'"
        ),
        env=env,
        echo=False,
    )
    assert outcome.ok, outcome.log[-3000:]
    history = json.loads((outputs / "img" / "history.json").read_text())
    assert (
        history["status"] == "completed" and history["dataset"] == "synthetic-lesions"
    )
    assert len(history["rounds"][2]["hospitals"]) == 2
    _, meta = load_model(outputs / "latest" / "final_model.pt")
    assert meta["data"]["input_shape"] == [1, 32, 32]
    assert not superlinks_of(tmp_path / "flwr-home")
