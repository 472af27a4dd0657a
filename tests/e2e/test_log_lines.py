"""A real ``flwr run`` prints each log line once and no Protobuf warning."""

import pytest
from support.federation import REPO

from scripts.flower.driver import run_simulation
from scripts.flower.env import flower_env

ROUNDS = 2


@pytest.mark.slow
def test_each_log_line_is_printed_once(tmp_path):
    outcome = run_simulation(
        app_dir=REPO,
        num_hospitals=2,
        run_config=f"num-server-rounds={ROUNDS} output-dir='{tmp_path / 'outputs'}'",
        env=flower_env(tmp_path / "flwr-home"),
        echo=False,
    )
    assert outcome.ok, outcome.log[-3000:]
    lines = outcome.log.splitlines()
    # Opacus's import-time logging.basicConfig once doubled every Flower line
    # (a second copy with a date prefix).
    received = [line for line in lines if "aggregate_train: Received" in line]
    assert len(received) == ROUNDS, received
    assert "Protobuf gencode" not in outcome.log
