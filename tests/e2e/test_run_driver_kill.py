"""A real simulation whose local SuperLink dies mid-run (a user hit this): the
driver reports the run failed, nothing of the run outlives it, and the run's
history.json says failed.

Before the driver owned the whole process tree, ``flwr-simulation`` and its Ray
actors (re-parented to init, in a session of their own) kept training for 130+
rounds into the folder of the run already reported failed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support.deploy import processes_mentioning
from support.federation import REPO

from scripts.flower.driver import run_simulation
from scripts.flower.env import flower_env
from scripts.flower.processes import alive
from scripts.flower.superlink import superlinks_of

pytestmark = pytest.mark.slow


def _rounds(history: Path) -> list[int]:
    try:
        return [r["round"] for r in json.loads(history.read_text())["rounds"]]
    except (OSError, ValueError, KeyError):
        return []


def test_a_killed_local_superlink_ends_the_whole_run(tmp_path):
    home = tmp_path / "flwr-home"
    outputs = tmp_path / "outputs"
    history = outputs / "killed" / "history.json"
    killed: list[int] = []

    def kill_superlink_after_round_one() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and 1 not in _rounds(history):
            time.sleep(0.2)
        for pid in superlinks_of(home):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_superlink_after_round_one, daemon=True)
    killer.start()
    outcome = run_simulation(
        app_dir=REPO,
        num_hospitals=3,
        # Far more rounds than the test waits for: only the kill can end it.
        run_config=(
            f"num-server-rounds=500 output-dir='{outputs}' run-name='killed' "
            "report=false"
        ),
        env=flower_env(home),
        echo=False,
        output_dir=outputs,
        timeout=300,
    )
    killer.join(timeout=10)
    assert killed, outcome.log[-3000:]
    assert not outcome.ok
    assert outcome.status.startswith("failed (the local SuperLink exited"), outcome
    # It recorded the tree, not only what it started (SuperLink, `flwr run`):
    # SuperExec, flwr-simulation, Ray's GCS, raylet and workers.
    assert set(killed) < outcome.processes and len(outcome.processes) >= 6
    assert not [pid for pid in outcome.processes if alive(pid)]
    assert not processes_mentioning(str(home), environ=True)
    assert not superlinks_of(home)  # none was revived to answer `flwr ls`

    recorded = json.loads(history.read_text())
    assert recorded["status"] == "failed"
    assert recorded["dataset"] == "wdbc"  # the ServerApp's other keys are kept
    rounds = _rounds(history)
    assert 1 in rounds and len(rounds) < 500
    time.sleep(3)
    assert _rounds(history) == rounds  # nothing trains on
