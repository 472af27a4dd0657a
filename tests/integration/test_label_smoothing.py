"""label-smoothing: training cross-entropy against smoothed targets, DP or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.federation import make_run_config
from torch import nn

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.privacy.dp_sgd import DPSettings, train_dp
from app.server_app import app as server_app
from data.spec import Split
from models.tabular import LogisticRegression
from models.training import TrainSettings, make_loader, predict_proba, train_epochs
from scripts.harness.inprocess import run_inprocess

CPU = torch.device("cpu")
N, D = 40, 4


def _split(seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    return Split(x, (x[:, 0] > 0).astype(np.int64))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return LogisticRegression(D)


def _minus_smoothed_gradient(split: Split, smoothing: float) -> list[torch.Tensor]:
    """The weights after one full-batch step at rate 1 on the smoothed loss."""
    ref = _model()
    nn.functional.cross_entropy(
        ref(torch.as_tensor(split.x)),
        torch.as_tensor(split.y),
        label_smoothing=smoothing,
    ).backward()
    return [(p - p.grad).detach() for p in ref.parameters()]


def _one_step(smoothing: float) -> TrainSettings:
    return TrainSettings(
        epochs=1,
        batch_size=N,
        learning_rate=1.0,
        momentum=0.0,
        label_smoothing=smoothing,
    )


def test_a_plain_step_follows_the_smoothed_loss_gradient():
    split = _split()
    expected = _minus_smoothed_gradient(split, 0.2)
    hard = _minus_smoothed_gradient(split, 0.0)
    model = _model()
    train_epochs(model, make_loader(split, N, shuffle=False), _one_step(0.2), CPU)
    for p, e, h in zip(model.parameters(), expected, hard, strict=True):
        torch.testing.assert_close(p.detach(), e)
        assert not torch.allclose(e, h)  # smoothing changed the step


def test_a_dp_step_follows_the_smoothed_loss_gradient():
    # q = 1 (batch = N), no noise, a clip no gradient reaches: one DP-SGD step is
    # the plain full-batch step, so it must follow the smoothed loss too.
    split = _split()
    model = _model()
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=1e6, delta=1e-5)
    train_dp(model, split, _one_step(0.2), dp, CPU, seed=1, report_epsilon=False)
    expected = _minus_smoothed_gradient(split, 0.2)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def test_smoothing_bounds_the_confidence_on_separable_data():
    split = _split()
    long = {"epochs": 300, "batch_size": 8, "learning_rate": 0.5, "momentum": 0.9}
    confidence = {}
    for smoothing in (0.0, 0.2):
        model = _model()
        settings = TrainSettings(**long, label_smoothing=smoothing)
        train_epochs(model, make_loader(split, 8, shuffle=True, seed=2), settings, CPU)
        probs = predict_proba(model, split.x, CPU)
        confidence[smoothing] = float(probs[np.arange(N), split.y].mean())
    assert confidence[0.0] > 0.97
    # the smoothed optimum puts 1 - 0.2 + 0.2 / 2 = 0.9 on the true class
    assert 0.8 < confidence[0.2] < 0.93


def test_label_smoothing_out_of_range_is_refused_by_name():
    with pytest.raises(ConfigError, match="label-smoothing"):
        RunConfig.from_run_config({"label-smoothing": 1.0})
    with pytest.raises(ConfigError, match="label-smoothing"):
        RunConfig.from_run_config({"label-smoothing": -0.1})


def test_hospitals_train_with_the_configured_smoothing(tmp_path, client_training):
    run_config = make_run_config(
        tmp_path, **{"num-server-rounds": 1, "label-smoothing": 0.1}
    )
    run_inprocess(server_app, client_app, num_hospitals=2, run_config=run_config)
    assert [s.label_smoothing for s, _ in client_training] == [0.1, 0.1]


@pytest.mark.parametrize(
    ("key", "value"),
    [("label-smoothing", 0.1), ("local-steps", 1), ("local-epochs", 3)],
)
def test_vertical_runs_refuse_horizontal_training_keys(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'.*task='vertical'"):
        RunConfig.from_run_config({"task": "vertical", key: value})
