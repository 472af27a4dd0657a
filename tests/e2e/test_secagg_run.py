"""Whole runs with ``secure-aggregation = true``: the ServerApp in-process and one
real ``flwr run``; accuracy within 0.5 points of the plain run."""

from __future__ import annotations

import json

import pytest
from support.federation import REPO, make_run_config

from app.client_app import app as client_app
from app.server_app import app as server_app
from scripts.flower.driver import run_simulation
from scripts.flower.env import flower_env
from scripts.flower.superlink import superlinks_of
from scripts.harness.inprocess import run_inprocess


def final_accuracy(outputs, run_name="test-run") -> dict:
    history = json.loads((outputs / run_name / "history.json").read_text())
    assert history["status"] == "completed"
    return history


def test_secure_run_matches_plain_accuracy(tmp_path):
    results = {}
    for secure in (False, True):
        config = make_run_config(
            tmp_path / str(secure),
            **{"num-server-rounds": 3, "secure-aggregation": secure},
        )
        run_inprocess(server_app, client_app, num_hospitals=4, run_config=config)
        history = final_accuracy(tmp_path / str(secure) / "outputs")
        results[secure] = history
    plain = results[False]["rounds"][-1]["server"]["accuracy"]
    secure = results[True]["rounds"][-1]["server"]["accuracy"]
    assert abs(secure - plain) <= 0.005
    for entry in results[True]["rounds"][1:]:
        assert "skipped" not in entry
        assert entry["secure_aggregation"]["masked"] == 4
        assert len(entry["hospitals"]) == 4
        for hospital in entry["hospitals"].values():
            assert hospital["train"]["secagg_clipped_fraction"] == 0.0


@pytest.mark.slow
def test_flwr_run_with_secure_aggregation(tmp_path):
    rounds = 2
    config = make_run_config(tmp_path / "plain", **{"num-server-rounds": rounds})
    run_inprocess(server_app, client_app, num_hospitals=3, run_config=config)
    plain = final_accuracy(tmp_path / "plain" / "outputs")["rounds"][-1]["server"]

    env = flower_env(tmp_path / "flwr-home")
    outputs = tmp_path / "outputs"
    outcome = run_simulation(
        app_dir=REPO,
        num_hospitals=3,
        env=env,
        echo=False,
        run_config=(
            f"num-server-rounds={rounds} secure-aggregation=true "
            f"output-dir='{outputs}' run-name='secagg'"
        ),
    )
    assert outcome.ok, outcome.log[-3000:]
    history = final_accuracy(outputs, "secagg")
    for entry in history["rounds"][1:]:
        assert entry["secure_aggregation"]["masked"] == 3, entry
    assert abs(history["rounds"][-1]["server"]["accuracy"] - plain["accuracy"]) <= 0.005
    assert not superlinks_of(tmp_path / "flwr-home")
