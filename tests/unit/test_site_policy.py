"""The site policy's rules, the epsilon ledger and the audit log's hash chain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app.config import RunConfig
from app.governance.audit import GENESIS, append_entry, read_entries, verify
from app.governance.ledger import EpsilonLedger
from app.governance.policy import PolicyError, load_policy
from app.governance.rules import RULES, Request, check, suppress_small, too_few_records
from scripts.cli import main as cli


def write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


# --- policy.toml -----------------------------------------------------------------


def test_a_full_policy_is_read_into_a_frozen_record(tmp_path):
    path = write_policy(
        tmp_path,
        'tasks = ["tabular"]\ndatasets = ["heart-disease", "csv"]\n'
        'models = ["logreg"]\ndp = "local"\nmax-epsilon = 3\n'
        "lifetime-epsilon = 10.0\nsecure-aggregation = true\nmin-records = 20\n"
        "max-rounds = 50\n",
    )
    policy = load_policy(path)
    assert policy.tasks == ("tabular",) and policy.datasets == ("heart-disease", "csv")
    assert policy.dp == "local" and policy.max_epsilon == 3.0
    assert isinstance(policy.max_epsilon, float)
    assert policy.min_records == 20 and policy.max_rounds == 50
    # the ledger lives beside the policy unless the policy names it
    assert policy.epsilon_ledger == tmp_path / "policy.epsilon-ledger.json"
    with pytest.raises(AttributeError):
        policy.dp = "none"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("dpp = 'local'\n", "unknown key(s) dpp"),
        ("dp = 'loca'\n", "'dp' must be one of none, local, central"),
        ("max-epsilon = '3'\n", "'max-epsilon' must be a number"),
        ("max-epsilon = -1\n", "'max-epsilon' must be > 0"),
        ("min-records = 2.5\n", "'min-records' must be an integer"),
        ("max-rounds = true\n", "'max-rounds' must be an integer"),
        ("secure-aggregation = 1\n", "'secure-aggregation' must be true or false"),
        ("tasks = 'tabular'\n", "'tasks' must be a list of names"),
        ("models = ['resnet9']\n", "'models' names unknown ['resnet9']"),
        ("epsilon-ledger = 'l.json'\n", "'epsilon-ledger' needs 'lifetime-epsilon'"),
        ("dp = \n", "not valid TOML"),
    ],
)
def test_a_bad_policy_is_an_error_naming_the_file_and_key(tmp_path, text, names):
    path = write_policy(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in str(err.value) and names in str(err.value)


def test_a_missing_policy_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(PolicyError, match="cannot read the site policy"):
        load_policy(tmp_path / "absent.toml")


# --- the rules -------------------------------------------------------------------

# rule -> (policy.toml, a run that complies, a run that breaks it); a run is
# (RunConfig overrides, Request overrides).
CASES = {
    "tasks": (
        'tasks = ["tabular"]',
        ({}, {}),
        ({"task": "vertical"}, {}),
    ),
    "datasets": (
        'datasets = ["heart-disease"]',
        ({}, {"dataset": "heart-disease"}),
        ({}, {"dataset": "wdbc"}),
    ),
    "models": ('models = ["mlp"]', ({"model": "mlp"}, {}), ({"model": "logreg"}, {})),
    "dp": (
        'dp = "local"',
        ({"dp": "local", "dp_target_epsilon": 1.0}, {}),
        ({}, {}),
    ),
    "max-epsilon": (
        "max-epsilon = 3",
        ({}, {"run_epsilon": 3.0}),
        ({}, {"run_epsilon": 3.5}),
    ),
    "lifetime-epsilon": (
        "lifetime-epsilon = 10",
        ({"dp": "local", "dp_target_epsilon": 1.0}, {"spent_elsewhere": 9.0}),
        ({"dp": "local", "dp_target_epsilon": 1.0}, {"spent_elsewhere": 9.5}),
    ),
    "secure-aggregation": (
        "secure-aggregation = true",
        ({"secure_aggregation": True}, {}),
        ({}, {}),
    ),
    "max-rounds": (
        "max-rounds = 5",
        ({"num_server_rounds": 5}, {"server_round": 5}),
        ({"num_server_rounds": 6}, {}),
    ),
}


def request(cfg_overrides: dict, req_overrides: dict) -> Request:
    cfg = RunConfig(**cfg_overrides)
    fields = {
        "cfg": cfg,
        "dataset": cfg.dataset,
        "server_round": 1,
        "run_epsilon": cfg.dp_budget if cfg.dp != "none" else math.inf,
        **req_overrides,
    }
    return Request(**fields)


def test_every_rule_has_a_complying_and_a_violating_case():
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", list(CASES))
def test_each_rule_passes_a_complying_run_and_refuses_a_violating_one(tmp_path, rule):
    text, complying, violating = CASES[rule]
    policy = load_policy(write_policy(tmp_path, text + "\n"))
    assert check(policy, request(*complying)) is None
    refusal = check(policy, request(*violating))
    assert refusal is not None and refusal.rule == rule
    assert "the site" in refusal.reason


def test_reasons_name_settings_only(tmp_path):
    policy = load_policy(write_policy(tmp_path, 'dp = "local"\nmax-epsilon = 3\n'))
    refusal = check(policy, request({}, {}))
    assert refusal is not None and refusal.rule == "dp"
    assert refusal.reason == "the site requires dp='local'; the run has dp='none'"
    unbounded = check(
        load_policy(write_policy(tmp_path, "max-epsilon = 3\n")), request({}, {})
    )
    assert unbounded is not None and "sets no epsilon budget" in unbounded.reason


def test_lifetime_budget_needs_local_dp(tmp_path):
    policy = load_policy(write_policy(tmp_path, "lifetime-epsilon = 10\n"))
    refusal = check(policy, request({"dp": "central", "dp_target_epsilon": 1.0}, {}))
    assert refusal is not None and refusal.rule == "lifetime-epsilon"
    assert "needs dp='local'" in refusal.reason


def test_an_empty_policy_refuses_nothing(tmp_path):
    policy = load_policy(write_policy(tmp_path, "# no rules\n"))
    assert check(policy, request({"num_server_rounds": 500}, {})) is None


# --- min-records -----------------------------------------------------------------


def test_aggregates_on_too_few_records_are_suppressed():
    metrics = {
        "num-examples": 120,
        "train_loss": 0.3,
        "val-num-examples": 15,
        "val_accuracy": 0.9,
        "label-count-0": 112,
        "label-count-1": 8,
    }
    kept, dropped = suppress_small(metrics, 20)
    assert kept == {"num-examples": 120, "train_loss": 0.3, "label-count-0": 112}
    assert sorted(dropped) == ["label-count-1", "val-num-examples", "val_accuracy"]
    assert suppress_small(metrics, 8)[1] == []
    # a val_* metric whose split size is not reported cannot be shown to be safe
    assert suppress_small({"num-examples": 50, "val_auc": 0.8}, 20)[1] == ["val_auc"]
    assert too_few_records({"num-examples": 19}, 20)
    assert not too_few_records({"num-examples": 20}, 20)


# --- epsilon ledger --------------------------------------------------------------


def test_ledger_keeps_each_runs_latest_spend_across_loads(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = EpsilonLedger.load(path).charge(1, 0.5).charge(1, 1.2).charge(2, 2.0)
    ledger = ledger.charge(1, 0.7)  # an older report never lowers the record
    again = EpsilonLedger.load(path)
    assert again.runs == {"1": 1.2, "2": 2.0}
    assert again.spent() == pytest.approx(3.2)
    assert again.spent_elsewhere(1) == pytest.approx(2.0)
    assert json.loads(path.read_text())["spent"] == pytest.approx(3.2)


# --- audit log -------------------------------------------------------------------


def write_log(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(n):
        append_entry(
            path,
            {"message_type": "train", "round": i + 1, "metrics": {"m": {"x": i}}},
        )
    return path


def test_entries_are_numbered_and_chained(tmp_path):
    path = write_log(tmp_path)
    entries = read_entries(path)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev"] == GENESIS
    assert all(
        b["prev"] == a["hash"] for a, b in zip(entries[:-1], entries[1:], strict=True)
    )
    result = verify(path)
    assert result.ok and result.entries == 4 and result.head == entries[-1]["hash"]


@pytest.mark.parametrize(
    ("old", "new"),
    [('"x":2', '"x":3'), ('"round":3', '"round":4'), (',"round"', ', "round"')],
)
def test_a_one_character_edit_fails_naming_the_entry(tmp_path, old, new):
    path = write_log(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[2]
    lines[2] = lines[2].replace(old, new, 1)
    path.write_text("".join(lines))
    result = verify(path)
    assert not result.ok
    assert (result.bad_entry, result.line, result.entries) == (3, 3, 2)
    assert "edited" in (result.problem or "")


def test_a_deleted_entry_fails_naming_it(tmp_path):
    path = write_log(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]))
    result = verify(path)
    assert not result.ok and result.bad_entry == 2 and result.line == 2
    assert "removed" in (result.problem or "")


def test_cli_verify_and_show(tmp_path, capsys):
    path = write_log(tmp_path)
    head = read_entries(path)[-1]["hash"]
    assert cli(["audit-log", "verify", str(path)]) == 0
    assert f"OK, 4 entries, hash chain intact; head {head}" in capsys.readouterr().out
    assert cli(["audit-log", "verify", str(path), "--head", head]) == 0
    capsys.readouterr()
    assert cli(["audit-log", "show", str(path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["#", "time", "run"] and len(table) == 1 + 4 + 1
    # the last entry removed: the chain still verifies, the recorded head does not
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    assert cli(["audit-log", "verify", str(path)]) == 0
    assert cli(["audit-log", "verify", str(path), "--head", head]) == 1
    capsys.readouterr()
    assert cli(["audit-log", "verify", str(tmp_path / "absent.jsonl")]) == 1
    assert "cannot read the audit log" in capsys.readouterr().err
