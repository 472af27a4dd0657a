"""Clinical metrics on hand-made predictions and ``medflower evaluate`` on images."""

import json
import math

import numpy as np
import pytest
import torch
from support.federation import evaluate_cli
from support.imaging import write_medmnist, write_png

from app.client.hospital import model_spec
from app.config import RunConfig
from data.registry import get_dataset
from models.checkpoint import save_model
from models.metrics import (
    bootstrap_ci,
    brier_score,
    classification_metrics,
    confusion,
    expected_calibration_error,
    per_class_recall,
)

# ------------------------------------------------------------------ metrics


def binary(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def test_binary_auc_sensitivity_specificity_by_hand():
    # positives score 0.4, 0.9; negatives 0.1, 0.6: 3 of 4 pairs ordered -> AUC 0.75
    y = np.array([0, 0, 1, 1])
    probs = binary([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, probs)
    assert m["auc"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx(0.5)  # 0.9 found, 0.4 missed
    assert m["specificity"] == pytest.approx(0.5)  # 0.1 right, 0.6 false alarm
    assert m["accuracy"] == pytest.approx(0.5)
    assert confusion(y, probs) == [[1, 1], [1, 1]]


def test_unbalanced_sensitivity_specificity():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probs = binary([0.9, 0.8, 0.7, 0.2, 0.1, 0.1, 0.3, 0.2, 0.6, 0.4])
    m = classification_metrics(y, probs)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    # of 24 (positive, negative) pairs, 0.9/0.8/0.7 win all 18; 0.2 beats the two
    # 0.1s, ties one 0.2 (counts 1/2) and loses three: AUC = 20.5 / 24
    assert m["auc"] == pytest.approx(20.5 / 24)


def test_multiclass_macro_ovr_auc_and_per_class_recall():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
            [0.6, 0.3, 0.1],
            [0.5, 0.4, 0.1],
            [0.2, 0.2, 0.6],
        ]
    )
    m = classification_metrics(y, probs)
    assert m["auc"] == pytest.approx(1.0)  # each class's score ranks it first
    assert "sensitivity" not in m
    assert per_class_recall(y, probs) == pytest.approx([1.0, 0.5, 1.0])
    assert confusion(y, probs) == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]


def test_calibration_by_hand():
    y = np.array([0, 1, 0, 1])
    probs = binary([0.2, 0.2, 0.8, 0.8])  # confidence 0.8 everywhere, half right
    assert expected_calibration_error(y, probs) == pytest.approx(0.3)
    assert brier_score(np.array([1]), binary([0.75])) == pytest.approx(2 * 0.25**2)


def test_bootstrap_ci_contains_estimate_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.integers(0, 2, n)
        return y, binary(np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1))

    y, p = sample(100)
    low, high = bootstrap_ci(y, p, "auc", resamples=300, seed=1)
    auc = classification_metrics(y, p)["auc"]
    assert 0 <= low < auc < high <= 1
    assert (low, high) == bootstrap_ci(y, p, "auc", resamples=300, seed=1)
    y_big, p_big = sample(2000)
    low_b, high_b = bootstrap_ci(y_big, p_big, "auc", resamples=300, seed=1)
    assert high_b - low_b < (high - low) / 2
    acc_low, acc_high = bootstrap_ci(y, p, "accuracy", resamples=300, seed=1)
    assert acc_low <= classification_metrics(y, p)["accuracy"] <= acc_high
    assert all(
        math.isnan(v)
        for v in bootstrap_ci(np.zeros(5, int), binary([0.5] * 5), "auc", resamples=50)
    )


# ------------------------------------------------------------------ evaluate CLI


def saved_model(tmp_path, npz, *, image_size=0, name="model.pt"):
    """An (untrained) imaging model saved as the ServerApp would."""
    cfg = RunConfig(
        task="imaging", dataset="medmnist", data_path=str(npz), image_size=image_size
    )
    info = get_dataset(cfg.data_spec()).info()
    spec = model_spec(cfg, info)
    torch.manual_seed(0)
    path = tmp_path / name
    save_model(
        path,
        spec.build().state_dict(),
        spec,
        info,
        run_config=cfg.to_run_config(),
        preprocessing={},
    )
    return path


@pytest.mark.parametrize(
    ("shape", "classes"),
    [((28, 28), 2), ((28, 28, 3), 5), ((12, 12, 12), 2)],
    ids=["2d-gray-binary", "2d-rgb-multiclass", "3d"],
)
def test_evaluate_npz_writes_report_and_figures(tmp_path, capsys, shape, classes):
    npz = write_medmnist(tmp_path / "d.npz", shape=shape, classes=classes)
    model = saved_model(tmp_path, npz)
    out = tmp_path / "ev"
    assert (
        evaluate_cli(model=model, data=npz, split="test", out=out, bootstrap="200") == 0
    )
    report = json.loads((out / "report.json").read_text())
    printed = capsys.readouterr()
    assert json.loads(printed.out) == report
    assert printed.err.startswith("d.npz [test]: 20 records")  # the file, named
    assert report["num_examples"] == 20 and report["split"] == "test"
    assert set(report["metrics"]) >= {"auc", "accuracy", "balanced_accuracy", "ece"}
    assert len(report["confidence_intervals"]["auc"]) == 2
    assert len(report["confidence_intervals"]["accuracy"]) == 2
    assert len(report["per_class_recall"]) == classes
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts.shape == (classes, classes) and counts.sum() == 20
    if classes == 2:
        assert {"sensitivity", "specificity"} <= set(report["metrics"])
    for png in ("roc_curve.png", "confusion_matrix.png", "calibration.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert evaluate_cli(model=model, data=npz, split="val", bootstrap="0") == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 12


def test_evaluate_refuses_wrong_channels_dims_and_classes(tmp_path, capsys):
    gray = write_medmnist(tmp_path / "gray.npz")
    model = saved_model(tmp_path, gray)
    rgb = write_medmnist(tmp_path / "rgb.npz", shape=(28, 28, 3))
    assert evaluate_cli(model=model, data=rgb) == 2
    assert (
        "channel mismatch: the model takes 1-channel images" in capsys.readouterr().err
    )
    vol = write_medmnist(tmp_path / "vol.npz", shape=(8, 8, 8))
    assert evaluate_cli(model=model, data=vol) == 2
    assert "shape mismatch: the model takes 2D images" in capsys.readouterr().err
    many = write_medmnist(tmp_path / "many.npz", classes=4)
    assert evaluate_cli(model=model, data=many) == 2
    assert "class count mismatch" in capsys.readouterr().err


def test_evaluate_resizes_to_the_models_input(tmp_path, capsys):
    model = saved_model(tmp_path, write_medmnist(tmp_path / "a.npz"), image_size=32)
    other = write_medmnist(tmp_path / "b.npz", shape=(20, 20))
    assert evaluate_cli(model=model, data=other, bootstrap="0") == 0
    assert (
        "resized from 20x20 to 32x32" in json.loads(capsys.readouterr().out)["notes"][0]
    )


def test_evaluate_image_folder(tmp_path, capsys):
    model = saved_model(tmp_path, write_medmnist(tmp_path / "a.npz"))
    rng = np.random.default_rng(0)
    for cls in ("0", "1"):
        for i in range(4):
            write_png(
                tmp_path / "site" / cls / f"{i}.png",
                rng.integers(0, 255, (40, 40)).astype(np.uint8),
            )
    assert (
        evaluate_cli(model=model, data=tmp_path / "site", split="all", bootstrap="0")
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["num_examples"] == 8 and report["dataset"] == "image-folder"


def test_evaluate_per_site_table_and_json(tmp_path, capsys):
    npz = write_medmnist(tmp_path / "d.npz", counts=(80, 10, 10))
    model = saved_model(tmp_path, npz)
    assert (
        evaluate_cli(model=model, per_site=True, hospitals="3", out=tmp_path / "ps")
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["hospital", "num_examples", "auc"]
    assert [line.split()[0] for line in table[1:]] == [
        "hospital-0",
        "hospital-1",
        "hospital-2",
    ]
    result = json.loads((tmp_path / "ps" / "per_site.json").read_text())
    cfg = RunConfig(task="imaging", dataset="medmnist", data_path=str(npz))
    held_out = [len(get_dataset(cfg.data_spec()).hospital(i, 3).val) for i in range(3)]
    assert [r["num_examples"] for r in result["hospitals"].values()] == held_out
    assert 14 <= sum(held_out) <= 18  # about val-fraction 0.2 of the 80 train images
    assert evaluate_cli(model=model, per_site=True) == 2
    assert "pass --hospitals N" in capsys.readouterr().err
