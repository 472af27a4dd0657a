"""The site policy and audit log in a federation: the real ServerApp and ClientApp,
3 hospitals in process, each message serialised as on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, Message, MessageType
from support.federation import (
    REPO,
    dp_federation_config,
    make_context,
    make_message,
    make_run_config,
)

from app import client_app, server_app
from app.client.hospital import model_spec
from app.config import RunConfig
from app.governance.audit import read_entries, verify
from app.governance.ledger import EpsilonLedger
from app.governance.mods import POLICY_CODE
from data.registry import get_dataset
from scripts.harness.inprocess import run_inprocess


def _recording(replies: dict[int, list[Message]]):
    """The real ClientApp, keeping each reply as the hospital sent it."""

    def app(msg: Message, context: Context) -> Message:
        reply = client_app.app(msg, context)
        replies.setdefault(context.node_id, []).append(reply)
        return reply

    return app


def _federation(tmp_path: Path, run_config: dict, policy: str):
    """Run 3 hospitals, the first under ``policy``, each with an audit log."""
    (tmp_path / "policy.toml").write_text(policy)
    node_configs = [
        {
            "partition-id": i,
            "num-partitions": 3,
            "audit-log": str(tmp_path / f"audit-{i}.jsonl"),
        }
        for i in range(3)
    ]
    node_configs[0]["policy"] = str(tmp_path / "policy.toml")
    replies: dict[int, list[Message]] = {}
    grid = run_inprocess(
        server_app.app,
        _recording(replies),
        num_hospitals=3,
        run_config=run_config,
        node_configs=node_configs,
    )
    history = json.loads((tmp_path / "outputs/test-run/history.json").read_text())
    logs = [read_entries(tmp_path / f"audit-{i}.jsonl") for i in range(3)]
    return history, [replies[n] for n in grid.node_ids], logs


def _assert_log_matches(entries: list[dict], replies: list[Message]) -> None:
    """One entry per reply, in order, naming exactly the arrays and bytes sent."""
    assert len(entries) == len(replies)
    for entry, reply in zip(entries, replies, strict=True):
        if reply.has_error():
            assert entry["error"]["code"] == reply.error.code
            assert entry["error"]["reason"] == reply.error.reason
            assert "arrays" not in entry and "metrics" not in entry
            continue
        assert entry["outcome"] == "sent"
        sent = {
            name: [
                [key, list(a.shape), a.dtype, len(a.data)] for key, a in record.items()
            ]
            for name, record in reply.content.array_records.items()
        }
        logged = {
            name: [[a["name"], a["shape"], a["dtype"], a["bytes"]] for a in arrays]
            for name, arrays in entry["arrays"].items()
        }
        assert logged == sent
        assert entry["metrics"] == {
            name: dict(record) for name, record in reply.content.metric_records.items()
        }


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_hospital_refuses_a_run_without_dp_the_others_train(tmp_path):
    run_config = make_run_config(tmp_path, **{"num-server-rounds": 2, "report": False})
    history, replies, logs = _federation(
        tmp_path, run_config, 'dp = "local"\nmax-epsilon = 3.0\n'
    )
    assert history["status"] == "completed"
    reason = (
        "hospital hospital-0: refused by site policy, rule 'dp': the site "
        "requires dp='local'; the run has dp='none'"
    )
    for entry in history["rounds"][1:]:
        assert entry["errors"]["hospital-0"]["reason"] == reason
        assert entry["errors"]["hospital-0"]["phase"] == "train"
        trained = [h for h, v in entry["hospitals"].items() if "train" in v]
        assert trained == ["hospital-1", "hospital-2"]
    # The refusing hospital sent nothing but refusals, and its log says so.
    assert all(r.has_error() and r.error.code == POLICY_CODE for r in replies[0])
    assert {e["outcome"] for e in logs[0]} == {"refused"}
    decision = ["query.decision_stats"]  # the final model's validation histograms
    assert [e["message_type"] for e in logs[1]] == ["train", "evaluate"] * 2 + decision
    assert sum(len(e["arrays"]) for e in logs[1]) == 2  # the two updates
    for entries, sent in zip(logs, replies, strict=True):
        _assert_log_matches(entries, sent)
    # medflower audit-log verify: passes on the real log, fails on an edited copy
    log = tmp_path / "audit-1.jsonl"
    ok = _cli("audit-log", "verify", str(log))
    assert ok.returncode == 0 and "OK, 5 entries" in ok.stdout, ok.stderr
    lines = log.read_text().splitlines(keepends=True)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join([lines[0], lines[1].replace('"round":1', '"round":2')]))
    bad = _cli("audit-log", "verify", str(edited))
    assert bad.returncode == 1 and "FAILED at entry 2 (line 2)" in bad.stdout


def test_a_complying_dp_run_is_charged_to_the_sites_lifetime_budget(tmp_path):
    run_config = dp_federation_config(
        tmp_path,
        **{
            "dp-target-epsilon": 0.0,
            "dp-noise-multiplier": 4.0,
            "dp-accountant": "rdp",
            "dp-epsilon-budget": 1.0,
        },
    )
    policy = (
        'dp = "local"\nmax-epsilon = 3.0\nlifetime-epsilon = 1.5\n'
        "min-records = 40\nmax-rounds = 5\n"
    )
    history, replies, logs = _federation(tmp_path, run_config, policy)
    assert history["status"] == "completed"
    last = history["rounds"][-1]
    # Its held-out split (~30 records) is under min-records=40: no evaluate reply.
    assert last["errors"]["hospital-0"] == {
        "phase": "evaluate",
        "reason": "hospital hospital-0: refused by site policy, rule 'min-records': "
        "this evaluate reply rests on fewer than 40 records",
    }
    spent = last["privacy"]["epsilon"]["hospital-0"]
    assert 0 < spent <= 1.0
    ledger = EpsilonLedger.load(tmp_path / "policy.epsilon-ledger.json")
    assert ledger.runs == {"1": spent}  # what its own accountant reported
    assert logs[0][-2]["epsilon"] == spent  # the last train reply's entry
    for entries, sent in zip(logs, replies, strict=True):
        _assert_log_matches(entries, sent)  # suppressed metrics are not logged
    # min-records=40: the held-out split (~30 records) and small classes stay home
    trained = [
        r.content["metrics"]
        for r in replies[0]
        if r.has_content() and "arrays" in r.content
    ]
    assert trained and all(m["num-examples"] >= 40 for m in trained)
    assert not [k for m in trained for k in m if k.startswith("val")]
    assert all(
        v >= 40 for m in trained for k, v in m.items() if k.startswith("label-count")
    )
    unfiltered = replies[1][0].content["metrics"]  # no policy there
    assert [k for k in unfiltered if k.startswith("label-count")]
    # A second run would take the site past its lifetime budget: refused up front.
    cfg = RunConfig.from_run_config(run_config)
    model = model_spec(cfg, get_dataset(cfg.data_spec()).info()).build()
    context = make_context(
        run_config, node_config={**_node(tmp_path), "partition-id": 0}
    )
    context.run_id = 2
    reply = client_app.app(make_message(model, MessageType.TRAIN), context)
    assert reply.has_error() and reply.error.code == POLICY_CODE
    assert "rule 'lifetime-epsilon'" in reply.error.reason
    assert ledger.runs == EpsilonLedger.load(ledger.path).runs  # nothing spent


def _node(tmp_path: Path) -> dict:
    return {"num-partitions": 3, "policy": str(tmp_path / "policy.toml")}


def test_start_supernode_checks_the_policy_and_log_and_passes_their_paths(tmp_path):
    from flwr.common.config import parse_config_args

    from app.governance.audit import append_entry
    from scripts.deploy.hospital import DeployError, governance_paths, node_config

    policy = tmp_path / "policy.toml"
    policy.write_text('dp = "local"\nmax-epsilon = 3.0\n')
    log = tmp_path / "logs" / "audit.jsonl"
    paths = governance_paths(str(policy), str(log))
    parsed = parse_config_args([node_config("st-mary", tmp_path, "csv", paths)])
    assert parsed["policy"] == str(policy) and parsed["audit-log"] == str(log)
    assert parsed["hospital-name"] == "st-mary" and log.parent.is_dir()
    policy.write_text('dp = "locall"\n')
    with pytest.raises(DeployError, match=f"{policy}: 'dp' must be one of"):
        governance_paths(str(policy), None)
    append_entry(log, {"message_type": "train"})
    append_entry(log, {"message_type": "evaluate"})
    log.write_text(log.read_text().replace("evaluate", "evaluatE"))
    with pytest.raises(DeployError, match="FAILED at entry 2"):
        governance_paths(None, str(log))


def test_the_audit_log_records_the_masked_update_that_left(tmp_path, task_identity):
    from support.secagg import one_round
    from support.secagg import run_config as secagg_config

    from app.secagg import protocol as P
    from app.secagg.params import SecAggParams
    from app.secagg.secaggplus import SecAggPlusAggregator

    node_configs = [
        {"partition-id": i, "num-partitions": 3, "audit-log": str(tmp_path / f"{i}")}
        for i in range(3)
    ]
    _, grid, _ = one_round(
        secagg_config(tmp_path),
        3,
        SecAggPlusAggregator(SecAggParams()),
        node_configs=node_configs,
    )
    entries = read_entries(tmp_path / "0")
    types = [e["message_type"] for e in entries]
    assert "train" in types and any(t.startswith("query.secagg") for t in types)
    (train,) = [e for e in entries if e["message_type"] == "train"]
    (reply,) = [
        m
        for m in grid.replies
        if m.metadata.message_type == "train" and m.metadata.src_node_id == 101
    ]
    assert list(train["arrays"]) == [P.MASKED_RECORD]  # the masked vector, no model
    (masked,) = reply.content[P.MASKED_RECORD].values()
    assert train["arrays"][P.MASKED_RECORD][0]["bytes"] == len(masked.data)
    assert verify(tmp_path / "0").ok
