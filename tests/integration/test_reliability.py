"""Dropouts, skipped rounds, clean stops, checkpoints and bit-identical resume,
driven through the real ServerApp/ClientApp with the in-process Grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from support.federation import make_run_config

from app.client_app import app as client_app
from app.config import RunConfig
from app.server.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from app.server.federation import run_federation
from app.server.history import read_history
from app.server.report import REPORT_NAME
from scripts.harness.inprocess import SERVER_NODE_ID, InProcessGrid, server_context
from scripts.simulate import check_inputs


class ServerCrash(RuntimeError):
    """Stands in for the server process being killed."""


class CrashingGrid(InProcessGrid):
    """Dies when asked to send the first message of round ``crash_at``."""

    crash_at: int = 0

    def push_messages(self, messages):
        messages = list(messages)
        if (
            messages
            and int(messages[0].content["config"]["server-round"]) == self.crash_at
        ):
            raise ServerCrash(f"killed before round {self.crash_at}")
        return super().push_messages(messages)


def run(config: dict[str, Any], hospitals: int, grid_cls=InProcessGrid, **grid_kw: Any):
    grid = grid_cls(client_app, hospitals, config, **grid_kw)
    context = server_context(config)
    return run_federation(grid, context), grid


def history(run_dir: Path) -> dict[str, Any]:
    """The raw history.json, once the typed reader has accepted every key in it."""
    read_history(run_dir)
    return json.loads((run_dir / "history.json").read_text())


def round_of(msg: Message) -> int:
    return int(msg.content["config"]["server-round"])


def test_thirty_percent_failing_in_round_two_finishes_close_to_clean(
    tmp_path: Path,
) -> None:
    base = {"num-server-rounds": 5, "fraction-evaluate": 0.0, "min-hospitals": 5}
    clean, _ = run(make_run_config(tmp_path, **base, **{"run-name": "clean"}), 10)
    failing = {101, 102, 103}  # 30% of 10 hospitals

    def fail_in_round_two(node_id: int, msg: Message) -> None:
        if node_id in failing and round_of(msg) == 2:
            raise RuntimeError("disk full")

    faulty, _ = run(
        make_run_config(tmp_path, **base, **{"run-name": "faulty"}),
        10,
        on_deliver=fail_in_round_two,
    )
    assert clean.status == faulty.status == "completed"
    h = history(faulty.recorder.dir)
    assert [r["round"] for r in h["rounds"]] == [0, 1, 2, 3, 4, 5]
    round2 = h["rounds"][2]
    assert sorted(round2["errors"]) == ["hospital-0", "hospital-1", "hospital-2"]
    assert len(round2["hospitals"]) == 7 and "skipped" not in round2
    assert all("errors" not in r for r in h["rounds"] if r["round"] != 2)
    acc_clean = history(clean.recorder.dir)["final_server_metrics"]["accuracy"]
    acc_faulty = h["final_server_metrics"]["accuracy"]
    assert abs(acc_clean - acc_faulty) <= 0.01, (acc_clean, acc_faulty)


@pytest.mark.parametrize(
    ("strategy", "ema"), [("fedavg", 0.0), ("fedadam", 0.0), ("fedavg", 0.8)]
)
def test_killed_and_resumed_run_ends_bit_identical(
    tmp_path: Path, strategy: str, ema: float
) -> None:
    base = {
        "num-server-rounds": 4,
        "strategy": strategy,
        "model-ema": ema,  # the weight average, too, continues from the checkpoint
        "deterministic": True,
        "fraction-train": 0.75,
        "checkpoint-keep": 2,
    }
    full, _ = run(make_run_config(tmp_path, **base, **{"run-name": "full"}), 4)
    killed_config = make_run_config(tmp_path, **base, **{"run-name": "killed"})
    grid = CrashingGrid(client_app, 4, killed_config)
    grid.crash_at = 3
    context = Context(
        run_id=2,
        node_id=SERVER_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(killed_config),
    )
    with pytest.raises(ServerCrash):
        run_federation(grid, context)
    killed_dir = tmp_path / "outputs" / "killed"
    assert history(killed_dir)["status"] == "failed"
    assert not (killed_dir / "final_model.pt").exists()
    assert [p.name for p in list_checkpoints(killed_dir / "checkpoints")] == [
        "round-0001.pt",
        "round-0002.pt",
    ]

    resumed, _ = run({**killed_config, "resume-from": str(killed_dir)}, 4)
    assert resumed.status == "completed" and resumed.recorder.dir == killed_dir
    a = torch.load(full.recorder.model_path, weights_only=True)["state_dict"]
    b = torch.load(killed_dir / "final_model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    h = history(killed_dir)
    assert [r["round"] for r in h["rounds"]] == [0, 1, 2, 3, 4]
    assert h["resumed"][0]["after_round"] == 2
    assert h["resumed"][0]["previous_status"] == "failed"
    assert [r["server"] for r in h["rounds"]] == [
        r["server"] for r in history(full.recorder.dir)["rounds"]
    ]
    # Only the last `checkpoint-keep` rounds stay; no temp files are left behind.
    names = sorted(p.name for p in (killed_dir / "checkpoints").iterdir())
    assert names == ["round-0003.pt", "round-0004.pt"]
    if strategy == "fedadam":
        state = load_checkpoint(killed_dir).strategy_state
        assert set(state["m_t"]) == set(a) and set(state["v_t"]) == set(a)
    if ema:  # the saved model is the average, not the last global arrays
        raw = load_checkpoint(killed_dir).arrays.to_torch_state_dict()
        assert not all(torch.equal(raw[k], b[k]) for k in b)


def test_resume_refuses_a_changed_run_config(tmp_path: Path) -> None:
    config = make_run_config(
        tmp_path, **{"num-server-rounds": 1, "fraction-evaluate": 0.0}
    )
    done, _ = run(config, 2)
    changed = {**config, "learning-rate": 0.5, "resume-from": str(done.recorder.dir)}
    with pytest.raises(CheckpointError, match="'learning-rate' is 0.5"):
        run(changed, 2)
    # medflower simulate refuses it the same way before anything starts
    with pytest.raises(CheckpointError, match="'learning-rate' is 0.5"):
        check_inputs(RunConfig.from_run_config(changed))
    same = {**changed, "learning-rate": config["learning-rate"]}
    check_inputs(RunConfig.from_run_config(same))  # the original settings resume
    with pytest.raises(CheckpointError, match="does not exist"):
        run({**config, "resume-from": str(tmp_path / "nowhere")}, 2)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_round_below_min_hospitals_is_skipped_and_the_run_continues(
    tmp_path: Path, ema: float
) -> None:
    def break_three(node_id: int, msg: Message) -> None:
        if node_id != 101 and round_of(msg) == 3:
            raise RuntimeError("network down")

    config = make_run_config(
        tmp_path,
        **{
            "num-server-rounds": 4,
            "min-hospitals": 2,
            "fraction-evaluate": 0.0,
            # a skipped round does not move the average either (round 3: the
            # average of rounds 1-2 differs from round 2's global model)
            "model-ema": ema,
        },
    )
    outcome, _ = run(config, 4, on_deliver=break_three)
    assert outcome.status == "completed"
    rounds = history(outcome.recorder.dir)["rounds"]
    assert "min-hospitals=2" in rounds[3]["skipped"]
    assert rounds[3]["server"] == rounds[2]["server"]  # the global model was kept
    assert "skipped" not in rounds[4] and rounds[4]["server"] != rounds[3]["server"]
    # the report shows the skipped round and why
    problems = (outcome.recorder.dir / REPORT_NAME).read_text().split('id="problems"')
    assert "skipped round" in problems[1] and rounds[3]["skipped"] in problems[1]


def test_hospital_that_never_answers_is_named_and_left_out(tmp_path: Path) -> None:
    config = make_run_config(
        tmp_path, **{"num-server-rounds": 2, "fraction-evaluate": 0.0}
    )
    grid = InProcessGrid(client_app, 4, config)
    original = grid.push_messages

    def lose_node_104(messages):  # connected, but its replies never arrive
        messages = list(messages)
        ids = list(original([m for m in messages if m.metadata.dst_node_id != 104]))
        return ids + ["lost"] * (len(messages) - len(ids))

    grid.push_messages = lose_node_104
    context = server_context(config)
    outcome = run_federation(grid, context)
    assert outcome.status == "completed"
    rounds = history(outcome.recorder.dir)["rounds"]
    assert rounds[1]["no_reply"] == {"train": ["node-104"]}
    assert len(rounds[1]["hospitals"]) == 3
    assert "node-104" in (outcome.recorder.dir / REPORT_NAME).read_text()


def test_federation_below_minimum_too_long_stops_cleanly_with_its_checkpoint(
    tmp_path: Path,
) -> None:
    config = make_run_config(
        tmp_path,
        **{
            "num-server-rounds": 4,
            "min-hospitals": 3,
            "wait-for-hospitals": 0.0,
            "fraction-evaluate": 0.0,
        },
    )
    grid = InProcessGrid(client_app, 3, config)

    def two_leave_after_round_one(node_id: int, msg: Message) -> None:
        if round_of(msg) == 1 and node_id == 103:
            grid.offline.update({102, 103})  # they disconnect after this round

    grid.on_deliver = two_leave_after_round_one
    context = server_context(config)
    outcome = run_federation(grid, context)  # returns: no crash trace
    assert outcome.status == "stopped" and outcome.result.last_round == 1
    h = history(outcome.recorder.dir)
    assert h["status"] == "stopped" and h["last_round"] == 1
    assert "fewer than min-hospitals=3" in h["stop_reason"]
    assert [p.name for p in list_checkpoints(outcome.recorder.dir / "checkpoints")] == [
        "round-0001.pt"
    ]
    assert not outcome.recorder.model_path.exists()
    # The hospitals come back: the run resumes from its checkpoint and completes.
    resumed, _ = run({**config, "resume-from": str(outcome.recorder.dir)}, 3)
    assert resumed.status == "completed"
    assert [r["round"] for r in history(resumed.recorder.dir)["rounds"]] == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_skipped_rounds_for_longer_than_the_wait_stop_the_run(tmp_path: Path) -> None:
    def always_fail(node_id: int, msg: Message) -> None:
        if round_of(msg) >= 2 and node_id != 101:
            raise RuntimeError("broken")

    config = make_run_config(
        tmp_path,
        **{
            "num-server-rounds": 5,
            "min-hospitals": 2,
            "wait-for-hospitals": 0.0,
            "fraction-evaluate": 0.0,
        },
    )
    outcome, _ = run(config, 3, on_deliver=always_fail)
    assert outcome.status == "stopped" and outcome.result.last_round == 2
    h = history(outcome.recorder.dir)
    assert "wait-for-hospitals" in h["stop_reason"]
    assert "skipped" in h["rounds"][-1]
