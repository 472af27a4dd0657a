"""Federated statistics through the real apps and the CLI; MLflow tracking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from support.federation import make_context, make_run_config

from app import client_app, server_app
from app.stats.query import REPLY_KEY, StatsQuery
from data.tabular import read_heart_file, read_heart_table
from scripts.cli import main as cli
from scripts.harness.inprocess import run_inprocess
from strategies.screening import HOSPITAL_RECORD


def test_stats_mode_answers_with_aggregates_only_and_combines_exactly(
    tmp_path, heart_dir, task_identity
):
    run_config = make_run_config(
        tmp_path,
        mode="stats",
        dataset="heart-disease",
        **{"data-path": str(heart_dir), "stats-min-count": 150},
    )
    # va's own minimum (its site policy) is 250: above the query's 150
    own = [250 if f.name == "processed.va.data" else 0 for f in _files(heart_dir)]
    grid = run_inprocess(
        server_app.app,
        client_app.app,
        num_hospitals=4,
        run_config=run_config,
        node_configs=[
            {"partition-id": i, "num-partitions": 4, "min-records": m}
            for i, m in enumerate(own)
        ],
    )
    replies = [t for t in grid.traffic if t.direction == "up"]
    assert {t.message_type for t in grid.traffic} == {"query.federated_stats"}
    assert len(replies) == 8  # two stages x four hospitals, nothing else
    run_dir = tmp_path / "outputs" / "test-run"
    stats = json.loads((run_dir / "stats.json").read_text())
    assert json.loads((run_dir / "history.json").read_text())["status"] == "completed"
    assert (run_dir / "stats.png").stat().st_size > 0
    assert "data:image/png;base64," in (run_dir / "stats.html").read_text()
    sites = {s["site"]: s for s in stats["sites"]}
    assert sites["switzerland"]["suppressed"]  # 123 records < 150
    assert sites["switzerland"]["records"] is None
    assert sites["va"]["suppressed"]  # 200 records < its own 250
    assert stats["combined"]["sites"] == ["cleveland", "hungarian"]
    files = _files(heart_dir)
    kept = [read_heart_table(f)[0] for f in files[:2]]
    pooled = np.concatenate(kept)
    age = stats["combined"]["features"][0]
    assert age["count"] == len(pooled) and age["missing"] == 0
    assert age["mean"] == pytest.approx(pooled[:, 0].mean())
    assert age["std"] == pytest.approx(pooled[:, 0].std())
    query = StatsQuery("tabular", "ranges", num_classes=2)
    message = Message(
        RecordDict({"config": ConfigRecord(query.to_config())}),
        message_type="query.federated_stats",
        dst_node_id=101,
    )
    reply = client_app.app(message, make_context(run_config, 0, 4))
    assert set(reply.content.keys()) == {REPLY_KEY, HOSPITAL_RECORD}
    released = reply.content.config_records[REPLY_KEY]
    assert set(released) == {
        "site",
        "suppressed",
        "records",
        "noise",
        "shown",
        "minima",
        "maxima",
    }
    # the training loader still drops incomplete rows
    assert len(read_heart_file(files[1])[0]) < len(read_heart_table(files[1])[0])


def _files(heart_dir: Path) -> list[Path]:
    return sorted(heart_dir.glob("processed.*.data"))


def test_cli_prints_per_site_and_combined_tables_with_suppressed_cells(
    tmp_path, heart_dir, capsys
):
    code = cli(
        [
            "stats",
            "--data",
            str(heart_dir),
            "--min-count",
            "150",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "switzerland: suppressed (fewer records than the minimum count)" in out
    assert "\ncombined (cleveland, hungarian, va)\n" in out
    row = next(line for line in out.splitlines() if line.startswith("age "))
    assert row.split()[1] == "303"  # cleveland's first table
    assert out.count("suppressed") > 13
    assert {p.name for p in tmp_path.iterdir()} == {
        "stats.json",
        "stats.png",
        "stats.html",
    }


def test_cli_refuses_noise_without_public_bounds(tmp_path, capsys):
    csv = tmp_path / "d.csv"
    csv.write_text("a,target\n1,0\n2,1\n3,0\n4,1\n")
    code = cli(
        ["stats", "--data", str(csv), "--noise", "laplace", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "stats-noise='laplace' needs public a-priori feature bounds" in (
        capsys.readouterr().err
    )


def test_mlflow_tracking_writes_a_run_search_runs_reads(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_config = make_run_config(
        tmp_path,
        mlflow=True,
        model="logreg",
        report=False,
        **{"num-server-rounds": 2, "mlflow-experiment": "test-exp"},
    )
    run_inprocess(
        server_app.app, client_app.app, num_hospitals=2, run_config=run_config
    )
    uri = (tmp_path / "outputs" / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = mlflow.search_runs(experiment_names=["test-exp"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.dataset"] == "wdbc" and run["params.mlflow"] == "True"
    assert 0.8 < run["metrics.server/accuracy"] <= 1.0
    assert "metrics.hospital/hospital-0/train/train_loss" in runs.columns
    client = mlflow.tracking.MlflowClient(uri)
    history = client.get_metric_history(run["run_id"], "server/accuracy")
    assert {1, 2} <= {m.step for m in history}
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"final_model.pt", "history.json"} <= artifacts
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--noise", "gaussian", "--epsilon", "-1"], "--epsilon must be > 0.0"),
        (["--bins", "1"], "--bins must be >= 2"),
    ],
)
def test_cli_names_a_bad_value_by_its_option(argv, says, capsys):
    # the run-config key behind it (stats-noise-epsilon) is not what was typed
    assert cli(["stats", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "stats-" not in err
