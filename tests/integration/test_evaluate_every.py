"""``evaluate-every``: the server and the hospitals evaluate only the chosen rounds."""

from __future__ import annotations

import json

from support.federation import make_run_config

from app import client_app, server_app
from scripts.harness.inprocess import run_inprocess


def test_rounds_between_evaluations_train_but_are_not_evaluated(tmp_path):
    run_config = make_run_config(
        tmp_path, **{"num-server-rounds": 3, "evaluate-every": 2}
    )
    run_inprocess(
        server_app.app, client_app.app, num_hospitals=2, run_config=run_config
    )
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    assert history["status"] == "completed"
    evaluated = [r["round"] for r in history["rounds"] if r["server"]]
    assert evaluated == [0, 2, 3]  # every 2nd round, and the last
    for entry in history["rounds"][1:]:
        phases = {p for h in entry["hospitals"].values() for p in h}
        assert "train" in phases
        assert ("evaluate" in phases) == (entry["round"] in (2, 3))
    assert history["final_server_metrics"]["accuracy"] > 0.5
