"""Run report (report.html), ROC curve data, TensorBoard files, label counts."""

import base64
import json
import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from support.federation import make_run_config

from app.client.hospital import load_hospital
from app.client_app import app as real_client
from app.config import RunConfig
from app.server.history import RunHistory, read_history
from app.server.report import REPORT_NAME, label_distribution, roc_curves, write_report
from app.server.tensorboard import TensorBoardLogger
from app.server_app import app as server_app
from scripts.harness.inprocess import run_inprocess
from strategies.validation import match_dtypes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_history(*, dp: bool = True, roc: bool = True) -> RunHistory:
    rounds = [{"round": 0, "server": {"accuracy": 0.5, "auc": 0.5, "loss": 0.69}}]
    for r in (1, 2, 3):
        hospitals = {}
        for i, name in enumerate(("cleveland", "hungarian")):
            train = {
                "train_loss": 0.7 - 0.1 * r,
                "num-examples": 100 + i,
                "label-count-0": 60 - 20 * i,
                "label-count-1": 40 + 21 * i,
            }
            if dp:
                train["dp-epsilon"] = 0.5 * r * (1 + i)
            hospitals[name] = {
                "train": train,
                "evaluate": {
                    "accuracy": 0.6 + 0.05 * r,
                    "auc": 0.7,
                    "loss": 0.6,
                    "num-examples": 30,
                },
            }
        rounds.append(
            {
                "round": r,
                "server": {
                    "accuracy": 0.6 + 0.05 * r,
                    "auc": 0.7 + 0.05 * r,
                    "loss": 0.6 - 0.1 * r,
                },
                "hospitals": hospitals,
                "elapsed_s": 1.5 * r,
            }
        )
    rounds[2]["rejected"] = {"hungarian": {"phase": "train", "reason": "NaN values"}}
    rounds[1]["errors"] = {
        "va": {
            "phase": "train",
            "reason": "unreadable file",
            "more": [{"phase": "evaluate", "reason": "no held-out records"}],
        }
    }
    history = {
        "run_name": "unit",
        "flower_run_id": 1,
        "task": "tabular",
        "status": "completed",
        "strategy": "fedavg",
        "dataset": "heart-disease",
        "model": "logreg",
        "num_rounds": 3,
        "rounds": rounds,
        "class_names": ["no disease", "disease"],
        "final_server_metrics": rounds[-1]["server"],
    }
    if roc:
        history["roc"] = roc_curves(
            np.array([0, 0, 1, 1]),
            np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]]),
            ("no disease", "disease"),
        )
    return RunHistory.from_json(history)


def embedded_images(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def test_report_embeds_every_plot_and_saves_pngs(tmp_path):
    path = write_report(small_history(), tmp_path, run_config={"num-server-rounds": 3})
    page = path.read_text()
    assert path.name == REPORT_NAME
    for section in (
        "server",
        "hospitals",
        "privacy",
        "labels",
        "roc",
        "problems",
        "config",
    ):
        assert f'id="{section}"' in page
    images = embedded_images(page)
    pngs = sorted(tmp_path.glob("report-*.png"))
    assert {p.stem for p in pngs} == {
        "report-server-metrics",
        "report-hospital-metrics",
        "report-dp-epsilon",
        "report-label-distribution",
        "report-roc",
    }
    # Every saved PNG is embedded byte for byte: the HTML needs no other file.
    assert sorted(images) == sorted(p.read_bytes() for p in pngs)
    assert all(img.startswith(PNG_MAGIC) for img in images)
    assert "NaN values" in page and "hungarian" in page  # the dropped reply is listed
    # Both of a hospital's problems in one round are listed, the first not overwritten.
    assert "train: unreadable file" in page and "evaluate: no held-out" in page
    assert "no disease" in page and "disease" in page  # class names in label table
    assert "<script" not in page  # static, opens anywhere


def test_report_without_dp_or_roc_says_so(tmp_path):
    page = write_report(small_history(dp=False, roc=False), tmp_path).read_text()
    assert len(embedded_images(page)) == 3
    assert "DP off" in page
    assert "No ROC curve" in page
    assert not (tmp_path / "report-dp-epsilon.png").exists()


def test_report_lists_skipped_rounds_and_silent_hospitals(tmp_path):
    history = small_history(dp=False, roc=False)
    history.rounds[2].skipped = "1 sound training reply, fewer than min-hospitals=2"
    history.rounds[3].no_reply = {"train": ["node-104"]}
    page = write_report(history, tmp_path).read_text()
    problems = page[page.index('id="problems"') :]
    assert "skipped round" in problems and "fewer than min-hospitals=2" in problems
    assert "node-104" in problems and "no reply" in problems
    assert "<td>skipped rounds</td><td>1 (see below)</td>" in page


def test_report_of_a_clean_run_has_no_problems(tmp_path):
    history = small_history(dp=False, roc=False)
    for entry in history.rounds:
        entry.rejected = entry.errors = None
    page = write_report(history, tmp_path).read_text()
    assert "None: every round trained" in page and "skipped rounds" not in page


def test_label_distribution_takes_latest_counts():
    counts = label_distribution(small_history())
    assert counts == {"cleveland": {0: 60, 1: 40}, "hungarian": {0: 40, 1: 61}}


def test_roc_curve_points_and_auc():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    (curve,) = roc_curves(y, probs, ("neg", "pos"))
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of 4 pairs ordered.
    assert curve["auc"] == pytest.approx(0.75)
    assert curve["label"] == "pos"
    assert (curve["positives"], curve["negatives"]) == (2, 2)
    assert curve["fpr"][0] == 0.0 and curve["tpr"][0] == 0.0
    assert curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)
    # Trapezoid area under the returned points is the AUC.
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(0.75)


def test_roc_undefined_for_one_class_and_one_vs_rest_for_three():
    assert roc_curves(np.array([1, 1]), np.array([[0.2, 0.8], [0.3, 0.7]])) == []
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=30)
    curves = roc_curves(np.arange(30) % 3, probs)
    assert [c["label"] for c in curves] == [
        "class 0 vs rest",
        "class 1 vs rest",
        "class 2 vs rest",
    ]


def test_tensorboard_logger_writes_readable_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    for entry in small_history().rounds:
        logger.log_round(entry)
    logger.close()
    server = EventAccumulator(str(tmp_path / "tensorboard" / "server")).Reload()
    accuracy = [(e.step, round(e.value, 4)) for e in server.Scalars("server/accuracy")]
    assert accuracy == [(0, 0.5), (1, 0.65), (2, 0.7), (3, 0.75)]
    site = EventAccumulator(str(tmp_path / "tensorboard" / "hungarian")).Reload()
    assert "hospital/train/dp-epsilon" in site.Tags()["scalars"]
    assert "hospital/train/label-count-0" not in site.Tags()["scalars"]
    assert [e.value for e in site.Scalars("hospital/train/dp-epsilon")] == [
        1.0,
        2.0,
        3.0,
    ]


def test_inprocess_run_writes_report_roc_and_tensorboard(tmp_path):
    run_config = make_run_config(
        tmp_path, **{"num-server-rounds": 2, "tensorboard": True}
    )
    run_inprocess(server_app, real_client, num_hospitals=3, run_config=run_config)
    run_dir = tmp_path / "outputs" / "test-run"
    read_history(run_dir)  # the typed reader takes every key the run wrote
    history = json.loads((run_dir / "history.json").read_text())
    (curve,) = history["roc"]
    assert curve["positives"] + curve["negatives"] > 50
    # The stored curve belongs to the final model: its AUC is the final server AUC.
    assert curve["auc"] == pytest.approx(history["final_server_metrics"]["auc"])
    assert all(r["elapsed_s"] >= 0 for r in history["rounds"])
    page = (run_dir / REPORT_NAME).read_text()
    assert len(embedded_images(page)) == 4  # server, hospitals, labels, ROC (no DP)
    assert list((run_dir / "tensorboard" / "server").glob("events.out.tfevents.*"))
    assert list((run_dir / "tensorboard" / "hospital-0").glob("events.out.tfevents.*"))
    # Label counts are aggregate per-class training counts that add up.
    cfg = RunConfig.from_run_config(run_config)
    for i in range(3):
        site = load_hospital(cfg, {"partition-id": i, "num-partitions": 3})
        train = history["rounds"][-1]["hospitals"][f"hospital-{i}"]["train"]
        assert [train["label-count-0"], train["label-count-1"]] == site.label_counts()
        assert train["label-count-0"] + train["label-count-1"] == len(site.train)


def test_report_can_be_turned_off(tmp_path):
    run_config = make_run_config(tmp_path, **{"num-server-rounds": 1, "report": False})
    run_inprocess(server_app, real_client, num_hospitals=2, run_config=run_config)
    assert not (tmp_path / "outputs" / "test-run" / REPORT_NAME).exists()


def test_match_dtypes_restores_integer_buffers():
    mean = ArrayRecord(
        {
            "w": Array(np.array([0.5, 1.5], dtype=np.float32)),
            "num_batches_tracked": Array(np.array([10.6])),
        }
    )
    fixed = match_dtypes(
        mean, {"w": np.dtype("float32"), "num_batches_tracked": np.dtype("int64")}
    )
    assert fixed["w"].numpy().dtype == np.float32
    assert fixed["num_batches_tracked"].numpy().dtype == np.int64
    assert fixed["num_batches_tracked"].numpy().tolist() == [11]
