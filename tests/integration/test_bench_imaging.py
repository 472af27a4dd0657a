"""The imaging benchmark's recipe is a valid run config and its baseline is defined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.config import RunConfig
from scripts.benchmarks.imaging import QUICK, Setup, centralized


def test_default_recipe_is_fedsgd_with_a_server_adam():
    setup = Setup()
    cfg = RunConfig.from_run_config(
        setup.run_config(Path("/data/breastmnist.npz"), Path("/tmp/out"), 43)
    )
    assert setup.server_optimizer and QUICK.server_optimizer
    assert (cfg.strategy, cfg.local_steps, cfg.optimizer) == ("fedadam", 1, "sgd")
    assert (cfg.learning_rate, cfg.momentum, cfg.tau) == (1.0, 0.0, setup.tau)
    assert not Setup(momentum=0.9).server_optimizer
    assert not Setup(strategy="fedavg").server_optimizer


def test_centralized_refuses_a_recipe_without_a_pooled_counterpart(tmp_path):
    with pytest.raises(ValueError, match="no centralized counterpart"):
        centralized(Setup(local_steps=3), tmp_path / "none.npz", tmp_path, 42)


def test_centralized_selection_compares_the_federated_runs_evaluated_rounds(
    tmp_path, monkeypatch
):
    import numpy as np
    import torch

    from data.spec import Split
    from data.transforms import ImageSplit
    from models.imaging import poolcnn_small
    from scripts.benchmarks import imaging

    setup = Setup(
        model="poolcnn-small",
        rounds=5,
        evaluate_every=2,
        select_best="auc",
        model_ema=0.0,
        augment=False,
        hospitals=2,
        batch_size=4,
    )
    cfg = RunConfig.from_run_config(setup.run_config(tmp_path / "a.npz", tmp_path, 1))
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 8, 8), dtype=np.float32)
    y = np.arange(12) % 2
    scored: list[int] = []

    def fake_evaluate(model, split, device):  # a rising AUC: the last scored wins
        scored.append(len(scored))
        return {"auc": float(len(scored))}

    monkeypatch.setattr(imaging, "evaluate_split", fake_evaluate)
    torch.manual_seed(0)
    _, selected = imaging.train_rounds(
        setup, cfg, poolcnn_small(2, 1, 2), ImageSplit(x, y), Split(x, y)
    )
    assert len(scored) == 3  # rounds 2, 4 and the last (5), as the server evaluates
    assert selected == 5


def test_goal_follows_the_data_file_then_the_presets_dimensionality():
    from scripts.benchmarks.imaging import goal_for, goal_met

    assert goal_for("imaging-2d", Path("/x/breastmnist.npz")).min_auc == 0.90
    assert goal_for("imaging-2d", Path("/x/pneumoniamnist.npz")).ratio == 0.97
    adrenal = goal_for("imaging-3d", Path("/x/adrenalmnist3d.npz"))
    assert (adrenal.min_auc, adrenal.sensitivity) == (0.85, True)
    other = goal_for("imaging-3d", Path("/x/nodulemnist3d.npz"))
    mean = {"federated_auc": 0.9, "centralized_auc": 0.92, "federated_cpu_s": 600.0}
    seed = {"federated_sensitivity_at_threshold": 0.4}
    assert goal_met(other, mean, [seed])
    assert not goal_met(other, mean, [{"federated_sensitivity_at_threshold": 0.0}])
    assert goal_met(other, mean, [{"federated_sensitivity_at_threshold": np.nan}])
    low = {**mean, "federated_auc": 0.81, "centralized_auc": 0.80}
    assert goal_met(other, low, [seed]) and not goal_met(adrenal, low, [seed])
    assert not goal_met(adrenal, {**mean, "federated_cpu_s": 1300.0}, [seed])


def test_a_quick_run_claims_no_goal():
    from scripts.benchmarks.imaging import imaging_summary

    seed = {
        "seed": 42,
        "federated_auc": 0.91,
        "centralized_auc": 0.92,
        "cpu_s": 300.0,
        "federated_cpu_s": 200.0,
        "centralized_cpu_s": 100.0,
        "federated_sensitivity_at_threshold": 0.5,
    }
    full = imaging_summary([seed], Path("/x/breastmnist.npz"), "imaging-2d")
    assert full["goals_judged"] and full["goal_met"] is True
    quick = imaging_summary([seed], Path("/x/breastmnist.npz"), "imaging-2d", False)
    assert quick["goals_judged"] is False and "goal_met" not in quick
    assert quick["federated_auc"] == 0.91
