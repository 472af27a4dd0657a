"""history.json as typed records: round trip, strict keys, the ledger, statuses."""

from __future__ import annotations

import dataclasses
import json

import pytest

from app.server.history import (
    LEDGER_KEYS,
    PHASES,
    STATUSES,
    HistoryError,
    Resume,
    RoundEntry,
    RunHistory,
    SelectedRound,
    read_history,
    set_status,
    write_history,
)


def a_history() -> RunHistory:
    history = RunHistory(
        run_name="unit",
        flower_run_id=7,
        task="tabular",
        dataset="wdbc",
        strategy="fedavg",
        model="logreg",
        num_rounds=2,
    )
    history.record_round(RoundEntry(round=0, server={"accuracy": 0.5}, elapsed_s=0.1))
    ledger = {
        "train": {"a": {"train_loss": 0.4}, "b": {"train_loss": 0.5}},
        "evaluate": {"a": {"accuracy": 0.8}},
        "rejected": {},
        "errors": {"c": {"phase": "train", "reason": "disk full"}},
        "no_reply": {"evaluate": ["node-9"]},
        "federated": {"accuracy": 0.8},
    }
    history.record_round(
        RoundEntry.from_ledger(1, ledger, server={"accuracy": 0.7}, elapsed_s=1.0)
    )
    history.record_round(
        RoundEntry.from_ledger(
            2, {"train": {}, "evaluate": {}, "skipped": "too few"}, elapsed_s=2.0
        )
    )
    history.update(
        status="completed",
        class_names=["benign", "malignant"],
        selected_round=SelectedRound(round=1, metric="auc", value=0.9),
        resumed=[Resume(after_round=1, flower_run_id=6, previous_status="failed")],
        final_server_metrics={"accuracy": 0.7},
    )
    return history


def test_write_then_read_gives_the_same_history(tmp_path):
    history = a_history()
    write_history(tmp_path / "history.json", history)
    assert read_history(tmp_path) == history
    assert read_history(tmp_path / "history.json") == history


def test_rewrites_during_a_run_are_one_line_and_the_last_is_indented(tmp_path):
    history, path = a_history(), tmp_path / "history.json"
    write_history(path, history, final=False)  # after each round: C-encoded line
    assert len(path.read_text().splitlines()) == 1
    assert read_history(path) == history
    write_history(path, history)
    assert path.read_text().startswith('{\n  "')
    assert read_history(path) == history


def test_json_keys_are_todays_keys():
    """The on-disk layout other tools and old runs rely on."""
    data = a_history().to_json()
    assert list(data)[:9] == [
        "run_name",
        "flower_run_id",
        "task",
        "dataset",
        "strategy",
        "model",
        "num_rounds",
        "status",
        "rounds",
    ]
    first, second = data["rounds"][:2]
    assert first == {"round": 0, "server": {"accuracy": 0.5}, "elapsed_s": 0.1}
    assert second["hospitals"] == {
        "a": {"train": {"train_loss": 0.4}, "evaluate": {"accuracy": 0.8}},
        "b": {"train": {"train_loss": 0.5}},
    }
    # empty ledger fields (rejected) and None fields (privacy) are left out
    assert set(second) == {
        "round",
        "server",
        "hospitals",
        "federated",
        "errors",
        "no_reply",
        "elapsed_s",
    }
    assert data["rounds"][2]["skipped"] == "too few"
    assert data["selected_round"] == {"round": 1, "metric": "auc", "value": 0.9}
    assert data["resumed"][0]["previous_status"] == "failed"
    assert "privacy" not in data and "stop_reason" not in data


@pytest.mark.parametrize(
    ("where", "key"),
    [("run", "failed_rounds"), ("round", "failed"), ("round", "skip")],
)
def test_reader_refuses_a_key_it_does_not_declare(tmp_path, where, key):
    data = a_history().to_json()
    target = data if where == "run" else data["rounds"][1]
    target[key] = "renamed?"
    (tmp_path / "history.json").write_text(json.dumps(data))
    with pytest.raises(HistoryError, match=f"unknown key.*'{key}'"):
        read_history(tmp_path)


def test_reader_refuses_a_missing_required_key(tmp_path):
    data = a_history().to_json()
    del data["rounds"][1]["round"]
    (tmp_path / "history.json").write_text(json.dumps(data))
    with pytest.raises(HistoryError, match="missing key"):
        read_history(tmp_path)


def test_reader_names_an_unreadable_file(tmp_path):
    with pytest.raises(HistoryError, match="cannot read"):
        read_history(tmp_path)
    (tmp_path / "history.json").write_text("[1, 2]")
    with pytest.raises(HistoryError, match="JSON object"):
        read_history(tmp_path)


def test_ledger_keys_are_round_entry_fields_and_a_renamed_one_fails():
    fields = {f.name for f in dataclasses.fields(RoundEntry)}
    assert set(LEDGER_KEYS) <= fields and not set(PHASES) & fields
    assert "skipped" in LEDGER_KEYS and "secure_aggregation" in LEDGER_KEYS
    with pytest.raises(HistoryError, match="'skip'"):
        RoundEntry.from_ledger(3, {"train": {}, "skip": "too few"})


def test_round_zero_has_no_hospitals_and_dropped_names_every_kind():
    assert RoundEntry.from_ledger(0, {}).hospitals is None
    entry = RoundEntry(
        round=1,
        rejected={"a": {"phase": "train", "reason": "NaN"}},
        errors={"b": {"phase": "train", "reason": "crash"}},
        no_reply={"train": ["c"], "evaluate": ["d"]},
    )
    assert entry.dropped() == {"a", "b", "c", "d"}


def test_status_failed_is_valid_and_unknown_statuses_are_refused(tmp_path):
    assert STATUSES == ("running", "completed", "stopped", "failed")
    write_history(tmp_path / "history.json", a_history())
    failed = set_status(tmp_path, "failed")
    assert failed.status == "failed" and read_history(tmp_path).status == "failed"
    with pytest.raises(HistoryError, match="status must be one of"):
        a_history().update(status="crashed")
    with pytest.raises(TypeError):
        a_history().update(failed_rounds=1)


def test_record_round_replaces_a_rerun_round():
    history = a_history()
    assert history.hospitals() == {"a", "b", "c"}  # c: an error, still a hospital
    history.record_round(RoundEntry(round=1, server={"accuracy": 0.9}))
    assert [r.round for r in history.rounds] == [0, 1, 2]
    assert history.round(1) is not None and history.round(1).server["accuracy"] == 0.9
    assert [r.round for r in history.skipped_rounds()] == [2]


def test_flagged_rounds_counts_each_hospitals_anomalous_updates():
    def flags(**flagged):
        rows = {name: {"flagged": value} for name, value in flagged.items()}
        return {"hospitals": rows, "median_update_norm": 0.1}

    history = a_history()
    history.rounds = [
        RoundEntry(round=0),
        RoundEntry(round=1, anomaly=flags(a=True, b=False)),
        RoundEntry(round=2, anomaly=flags(a=True, b=True)),
        RoundEntry(round=3, anomaly=flags(a=False, b=False)),
    ]
    assert history.flagged_rounds() == {"a": 2, "b": 1}
    assert history.screened_rounds() == 3  # round 0 trains nothing
    history.rounds = history.rounds[:1]
    assert history.flagged_rounds() == {} and history.screened_rounds() == 0
