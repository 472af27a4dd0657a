import json

import numpy as np
import pytest
import torch
from support.federation import evaluate_cli, make_run_config

from app.client.decision import QUERY as DECISION_QUERY
from app.client_app import app as client_app
from app.server.history import read_history
from app.server_app import app as server_app
from models.decision import BINS, TEMPERATURES
from scripts.harness.inprocess import run_inprocess
from strategies.fedavg import HOSPITAL_RECORD

DECISION = f"query.{DECISION_QUERY}"


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A 2-round run with temperature scaling; hospital-2 fails the decision query."""
    tmp = tmp_path_factory.mktemp("run")
    replies = []

    def hospitals(msg, context):
        if msg.metadata.message_type == DECISION and context.node_id == 103:
            raise RuntimeError("this hospital fails the decision query")
        reply = client_app(msg, context)
        replies.append(reply)
        return reply

    run_inprocess(
        server_app,
        hospitals,
        num_hospitals=3,
        run_config=make_run_config(
            tmp, **{"num-server-rounds": 2, "calibration": "temperature"}
        ),
    )
    return tmp / "outputs" / "latest", replies


@pytest.fixture(scope="module")
def trained_model(federation):
    return federation[0] / "final_model.pt"


def test_final_model_stores_the_decision_chosen_on_validation(federation):
    run_dir, replies = federation
    stored = torch.load(run_dir / "final_model.pt", weights_only=True)["decision"]
    entry = read_history(run_dir).decision
    assert stored["rule"] == entry.rule == "youden"  # threshold-rule = auto
    assert 0.0 < stored["threshold"] < 1.0 and stored["temperature"] > 0
    assert entry.hospitals == ["hospital-0", "hospital-1"]  # the failing one left out
    assert "node-103" in (entry.left_out or {})  # the harness names it by node
    asked = [r for r in replies if r.metadata.message_type == DECISION]
    assert len(asked) == 2 and stored["records"] == sum(
        r.content["metrics"]["num-examples"] for r in asked
    )
    for reply in asked:  # counts in fixed bins and sums: no per-record value
        assert not reply.content.array_records
        assert list(reply.content.config_records) == [HOSPITAL_RECORD]
        metrics = reply.content["metrics"]
        n = metrics["num-examples"]
        assert len(metrics["decision-negatives"]) == len(metrics["decision-positives"])
        assert len(metrics["decision-negatives"]) == BINS > n
        assert sum(metrics["decision-negatives"] + metrics["decision-positives"]) == n
        assert len(metrics["decision-nll"]) == len(TEMPERATURES)
    assert entry.server_test is not None and entry.validation is not None


def test_evaluate_wdbc_writes_accuracy_and_auc(trained_model, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert evaluate_cli(model=trained_model, data="wdbc", json=out) == 0
    report = json.loads(out.read_text())
    assert report["num_examples"] == 114
    assert report["metrics"]["accuracy"] > 0.9
    assert 0.5 < report["metrics"]["auc"] <= 1.0
    assert json.loads(capsys.readouterr().out) == report
    # both decisions, labelled: at the stored threshold (temperature applied), at 0.5
    assert report["decision"]["rule"] == "youden"
    at, half = report["at_threshold"], report["at_0.5"]
    assert (
        at["threshold"] == report["decision"]["threshold"] and half["threshold"] == 0.5
    )
    assert half["sensitivity"] == report["metrics"]["sensitivity"]
    assert at["sensitivity"] > 0.8 and at["specificity"] > 0.8
    assert any("temperature" in note for note in report["notes"])


def test_evaluate_csv_with_wrong_feature_count_says_so(trained_model, tmp_path, capsys):
    path = tmp_path / "other.csv"
    rows = "\n".join(f"{a},{a * 2},{a % 2}" for a in range(20))
    path.write_text("a,b,target\n" + rows + "\n")
    assert evaluate_cli(model=trained_model, data=path, split="all") == 2
    assert "expects 30 features but" in capsys.readouterr().err


def test_evaluate_missing_model_file(tmp_path, capsys):
    assert evaluate_cli(model=tmp_path / "none.pt", data="wdbc") == 2
    assert "model file not found" in capsys.readouterr().err


def test_evaluate_csv_of_matching_schema(trained_model, tmp_path):
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    cols = [f"f{i}" for i in range(30)]
    lines = [",".join(cols + ["target"])]
    for x, y in zip(bunch.data[:100], 1 - bunch.target[:100], strict=True):
        lines.append(",".join(f"{v:.6g}" for v in x) + f",{y}")
    path = tmp_path / "site.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.json"
    assert evaluate_cli(model=trained_model, data=path, split="all", json=out) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert np.isfinite(metrics["auc"]) and metrics["accuracy"] > 0.8
