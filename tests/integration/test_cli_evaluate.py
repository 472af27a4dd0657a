import json

import numpy as np
import pytest
from support.federation import evaluate_cli, make_run_config

from app.client_app import app as client_app
from app.server_app import app as server_app
from scripts.harness.inprocess import run_inprocess


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run_inprocess(
        server_app,
        client_app,
        num_hospitals=2,
        run_config=make_run_config(tmp, **{"num-server-rounds": 2}),
    )
    return tmp / "outputs" / "latest" / "final_model.pt"


def test_evaluate_wdbc_writes_accuracy_and_auc(trained_model, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert evaluate_cli(model=trained_model, data="wdbc", json=out) == 0
    report = json.loads(out.read_text())
    assert report["num_examples"] == 114
    assert report["metrics"]["accuracy"] > 0.9
    assert 0.5 < report["metrics"]["auc"] <= 1.0
    assert json.loads(capsys.readouterr().out) == report


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
