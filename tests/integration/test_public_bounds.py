"""normalisation='public-bounds': one data-free transform shared by every site."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import MessageType
from support.federation import (
    dp_federation_config,
    evaluate_cli,
    make_context,
    make_message,
    make_run_config,
)

from app import client_app, server_app
from app.client.handlers import LOCAL_FAILURE_CODE
from app.client.hospital import model_spec
from app.config import ConfigError, RunConfig
from app.privacy.cohort_stats import QUERY
from data.preprocessing import Standardizer
from data.registry import get_dataset
from data.tabular import HEART_BOUNDS, HEART_FEATURES, read_heart_file
from scripts.harness.inprocess import run_inprocess

PUBLIC = {"normalisation": "public-bounds"}


def test_bounds_map_onto_minus_one_to_one():
    scaler = Standardizer.from_bounds(np.array([20.0, 0.0]), np.array([90.0, 1.0]))
    x = np.array([[20.0, 0.0], [55.0, 0.5], [90.0, 1.0], [125.0, 2.0]])
    np.testing.assert_allclose(
        scaler.transform(x), [[-1, -1], [0, 0], [1, 1], [2, 3]], atol=1e-6
    )
    with pytest.raises(ValueError, match="upper > lower"):
        Standardizer.from_bounds(np.array([1.0]), np.array([1.0]))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (PUBLIC, "normalisation='public-bounds' needs public a-priori feature bounds"),
        ({**PUBLIC, "dp-stats-epsilon": 0.3}, "dp-stats-epsilon"),
        (
            {**PUBLIC, "task": "imaging", "dataset": "synthetic-lesions"},
            "normalisation='public-bounds' standardises tabular features",
        ),
    ],
)
def test_unsupported_setups_are_refused_before_the_run(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_run_config(make_run_config(tmp_path, **overrides))


@pytest.mark.parametrize(
    "normalisation", [PUBLIC, {"normalisation": "dp-global", "dp-stats-epsilon": 0.3}]
)
def test_hospital_without_the_global_transform_refuses_to_train(
    wdbc_bounds, tmp_path, task_identity, normalisation
):
    run_config = make_run_config(tmp_path, **normalisation)
    cfg = RunConfig.from_run_config(run_config)
    model = model_spec(cfg, get_dataset(cfg.data_spec()).info()).build()
    reply = client_app.app(
        make_message(model, MessageType.TRAIN, {"server-round": 1}),
        make_context(run_config, 0, 2),
    )
    assert reply.has_error() and reply.error.code == LOCAL_FAILURE_CODE
    assert "ValueError" in reply.error.reason


@pytest.mark.slow
def test_federation_asks_no_statistics_spends_no_epsilon_and_evaluate_reproduces(
    wdbc_bounds, tmp_path, capsys
):
    run_config = dp_federation_config(tmp_path, **PUBLIC)
    grid = run_inprocess(
        server_app.app, client_app.app, num_hospitals=2, run_config=run_config
    )
    assert not any(m.metadata.message_type == f"query.{QUERY}" for m in grid.delivered)
    run_dir = tmp_path / "outputs" / "test-run"
    history = json.loads((run_dir / "history.json").read_text())
    assert history["status"] == "completed"
    norm = history["normalisation"]
    assert norm["mode"] == "public-bounds" and norm["epsilon_per_hospital"] == 0.0
    assert norm["mean"] == pytest.approx([2500.0] * 30)
    assert norm["std"] == pytest.approx([2500.0] * 30)
    # The whole target goes to DP-SGD: each hospital ends just under 1.0.
    for eps in history["privacy"]["epsilon"].values():
        assert 0.9 < eps <= 1.0
    # The saved model carries the transform; `medflower evaluate` reproduces the
    # server's scores on its test set.
    assert evaluate_cli(model=run_dir / "final_model.pt", data="wdbc", bootstrap=0) == 0
    report = json.loads(capsys.readouterr().out)
    final = history["final_server_metrics"]
    assert report["metrics"]["accuracy"] == pytest.approx(final["accuracy"])
    assert report["metrics"]["auc"] == pytest.approx(final["auc"])


def test_heart_bounds_fit_the_real_records(heart_dir):
    """The declared bounds fit the real data: nearly every cell maps into [-1, 1].

    The exceptions are data-entry anomalies the transform keeps (not clips): one
    resting blood pressure recorded as 0 and one cholesterol of 603 > 600.
    """
    lower, upper = np.array([HEART_BOUNDS[f] for f in HEART_FEATURES]).T
    scaler = Standardizer.from_bounds(lower, upper)
    x = np.concatenate([read_heart_file(p)[0] for p in heart_dir.glob("*.data")])
    assert len(x) == 740
    outside = np.abs(scaler.transform(x)) > 1.0 + 1e-6
    assert outside.sum() == 2
    names = {HEART_FEATURES[j] for j in np.nonzero(outside)[1]}
    assert names == {"trestbps", "chol"}
