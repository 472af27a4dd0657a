"""local-steps: a fixed number of optimizer steps per round (FedSGD at 1 step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.federation import make_run_config

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.server_app import app as server_app
from data.spec import Split
from models.training import TrainSettings, make_loader, train_epochs, training_batches
from scripts.harness.inprocess import run_inprocess


def split(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return Split(x, (x[:, 0] > 0).astype(np.int64))


def test_max_steps_draws_exactly_that_many_batches_across_passes():
    loader = make_loader(split(10), batch_size=4, shuffle=True, seed=1)  # 3 batches
    assert len(list(training_batches(loader, TrainSettings(epochs=2)))) == 6
    seven = list(training_batches(loader, TrainSettings(epochs=2, max_steps=7)))
    assert len(seven) == 7  # two full passes and one batch of a third
    assert sum(len(y) for _, y in seven[:3]) == 10  # each pass covers all records
    model = torch.nn.Linear(3, 2)
    stats = train_epochs(model, loader, TrainSettings(max_steps=5), torch.device("cpu"))
    assert stats["steps"] == 5


def test_one_plain_sgd_step_at_rate_one_is_minus_the_batch_gradient():
    data = split(12)
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad()
    settings = TrainSettings(
        batch_size=64, learning_rate=1.0, optimizer="sgd", momentum=0.0, max_steps=1
    )
    loader = make_loader(data, batch_size=64, shuffle=True, seed=3)  # one batch
    train_epochs(model, loader, settings, torch.device("cpu"))
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - g)


def test_local_steps_is_refused_with_local_dp():
    with pytest.raises(ConfigError, match="local-steps"):
        RunConfig(local_steps=1, dp="local", dp_noise_multiplier=1.0)


def test_every_hospital_takes_local_steps_whatever_its_size(tmp_path, client_training):
    run_config = make_run_config(
        tmp_path,
        **{
            "num-server-rounds": 2,
            "local-steps": 3,
            "local-epochs": 4,
            "batch-size": 8,
            "partitioner": "dirichlet",
            "dirichlet-alpha": 0.5,
        },
    )
    run_inprocess(server_app, client_app, num_hospitals=3, run_config=run_config)
    # 3 hospitals x 2 rounds, local-epochs unused
    assert [out["steps"] for _, out in client_training] == [3.0] * 6


def test_train_settings_map_the_run_config_and_take_overrides():
    from app.client.hospital import train_settings

    cfg = RunConfig(local_steps=2, label_smoothing=0.1, batch_size=8, seed=5)
    settings = train_settings(cfg)
    assert (settings.max_steps, settings.label_smoothing) == (2, 0.1)
    assert (settings.batch_size, settings.seed) == (8, 5)
    whole_run = train_settings(cfg, epochs=7, max_steps=0)
    assert (whole_run.epochs, whole_run.max_steps, whole_run.batch_size) == (7, 0, 8)
