"""The imaging benchmark's recipe is a valid run config and its baseline is defined."""

from __future__ import annotations

from pathlib import Path

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
