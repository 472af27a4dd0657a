"""One real ``flwr run`` simulation end to end (local SuperLink, Ray, 3 hospitals).

It also checks what a user reads: each log line once, no library warning.
"""

import json

import pytest
import torch
from support.federation import REPO, make_run_config

from app.client_app import app as client_app
from app.server_app import app as server_app
from models.checkpoint import load_model
from scripts.flower.driver import run_simulation
from scripts.flower.env import flower_env
from scripts.flower.superlink import superlinks_of
from scripts.harness.inprocess import run_inprocess


@pytest.mark.slow
def test_flwr_run_two_rounds_three_hospitals(tmp_path):
    env = flower_env(tmp_path / "flwr-home")
    outputs = tmp_path / "outputs"
    outcome = run_simulation(
        app_dir=REPO,
        num_hospitals=3,
        run_config=f"num-server-rounds=2 output-dir='{outputs}' run-name='e2e'",
        env=env,
        echo=False,
    )
    assert outcome.ok, outcome.log[-3000:]
    history = json.loads((outputs / "e2e" / "history.json").read_text())
    assert history["status"] == "completed"
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert len(history["rounds"][2]["hospitals"]) == 3
    assert history["rounds"][2]["server"]["accuracy"] > 0.9
    assert (outputs / "latest" / "final_model.pt").is_file()
    assert (outputs / "e2e" / "report.html").is_file()
    # the decision query (query.decision_stats) answered by all 3 under real Flower
    assert history["decision"]["rule"] == "youden"
    assert len(history["decision"]["hospitals"]) == 3
    # Progress: one summary line per round (round 0 = initial model), with an ETA.
    progress = [line for line in outcome.log.splitlines() if "] elapsed " in line]
    assert len(progress) == 3, progress
    assert "[round 2/2]" in progress[-1] and " eta " in progress[-1]
    # Each log line once: Opacus's import-time logging.basicConfig once doubled every
    # Flower line (a second copy with a date prefix); and no Protobuf warning.
    lines = outcome.log.splitlines()
    received = [line for line in lines if "aggregate_train: Received" in line]
    assert len(received) == 2, received
    assert "Protobuf gencode" not in outcome.log
    assert "FutureWarning" not in outcome.log  # Ray's tip on accelerator env vars
    assert "DEPRECATED FEATURE" not in outcome.log  # Flower's deprecated calls
    # the SuperLink this run started is gone
    assert not superlinks_of(tmp_path / "flwr-home")
    # The in-process harness (one process, its caches serving every hospital)
    # trains the same model as the real run (Ray actors) for the same seed.
    real, _ = load_model(outputs / "e2e" / "final_model.pt")
    config = make_run_config(
        tmp_path / "inprocess", **{"num-server-rounds": 2, "report": False}
    )
    run_inprocess(server_app, client_app, num_hospitals=3, run_config=config)
    here, _ = load_model(
        tmp_path / "inprocess" / "outputs" / "test-run" / "final_model.pt"
    )
    for name, value in real.state_dict().items():
        torch.testing.assert_close(here.state_dict()[name], value, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_failed_run_is_reported_as_failed(tmp_path):
    env = flower_env(tmp_path / "flwr-home")
    outcome = run_simulation(
        app_dir=REPO,
        num_hospitals=2,
        # valid for Flower, invalid for medflower: the ServerApp refuses to start
        run_config=f"num-server-rounds=1 learning-rate=-1.0 output-dir='{tmp_path}'",
        env=env,
        echo=False,
    )
    assert not outcome.ok
    assert outcome.status.startswith("finished:failed")
    assert not superlinks_of(tmp_path / "flwr-home")
