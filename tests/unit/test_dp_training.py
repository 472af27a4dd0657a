"""DP-SGD really clips per-sample gradients and adds calibrated noise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from app.privacy.dp_sgd import DPSettings, check_dp_compatible, train_dp
from data.spec import Split
from models.tabular import LogisticRegression, TabularMLP
from models.training import TrainSettings

CPU = torch.device("cpu")
N, D = 40, 6
# One Poisson step per epoch over all records with q = 1 (batch >= N): the batch
# is the whole data set, so a by-hand reference can be computed exactly.
SGD = TrainSettings(
    epochs=1, batch_size=N, learning_rate=1.0, optimizer="sgd", momentum=0.0
)


def _data(seed=0, scale=10.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(N, D)) * scale).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return Split(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return LogisticRegression(D)


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _clipped_reference(model, split, clip):
    """w - lr * sum_i clip(g_i) / N, per-sample gradients one record at a time."""
    ref = _model()
    ref.load_state_dict(model.state_dict())
    total = torch.zeros_like(_flat(ref))
    norms = []
    for x, y in zip(split.x, split.y, strict=True):
        ref.zero_grad()
        loss = nn.functional.cross_entropy(
            ref(torch.tensor(x)[None]), torch.tensor([y])
        )
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in ref.parameters()])
        norms.append(float(g.norm()))
        total += g * min(1.0, clip / (float(g.norm()) + 1e-6))
    return _flat(ref) - total / N, np.array(norms)


def test_noise_zero_equals_clip_only_training_and_respects_the_bound():
    split, clip = _data(), 0.05
    model = _model()
    expected, norms = _clipped_reference(model, split, clip)
    assert (norms > clip).mean() > 0.5  # clipping is active for most records
    before = _flat(model)
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=clip, delta=1e-5)
    train_dp(model, split, SGD, dp, CPU, seed=3, report_epsilon=False)
    after = _flat(model)
    assert torch.allclose(after, expected, atol=1e-6)
    # Each record moves the weights by at most lr * clip / N.
    assert float((after - before).norm()) <= SGD.learning_rate * clip + 1e-6
    # Without clipping the same step is far larger: the bound came from clipping.
    plain = _model()
    plain.zero_grad()
    nn.functional.cross_entropy(
        plain(torch.tensor(split.x)), torch.tensor(split.y)
    ).backward()
    assert (
        float(torch.cat([p.grad.flatten() for p in plain.parameters()]).norm())
        > 5 * clip
    )


def test_noise_is_seeded_and_has_the_calibrated_scale():
    split, clip, sigma = _data(), 0.05, 2.0
    clip_only = _model()
    train_dp(
        clip_only,
        split,
        SGD,
        DPSettings(noise_multiplier=0.0, max_grad_norm=clip, delta=1e-5),
        CPU,
        seed=3,
        report_epsilon=False,
    )
    runs = {}
    for seed in (3, 3, 4):
        model = _model()
        dp = DPSettings(noise_multiplier=sigma, max_grad_norm=clip, delta=1e-5)
        train_dp(model, split, SGD, dp, CPU, seed=seed, report_epsilon=False)
        runs.setdefault(seed, []).append(_flat(model))
    assert torch.equal(runs[3][0], runs[3][1])  # same seed, same noise
    assert not torch.allclose(runs[3][0], runs[4][0])  # other seed, other noise
    # Noise on the mean gradient has std sigma * clip / N per coordinate (lr = 1).
    noise = torch.cat([runs[3][0], runs[4][0]]) - torch.cat([_flat(clip_only)] * 2)
    expected = sigma * clip / N
    assert float(noise.std()) == pytest.approx(expected, rel=0.35)
    assert abs(float(noise.mean())) < 3 * expected / np.sqrt(len(noise)) * 2


def test_state_dict_keys_unchanged_and_mlp_trains():
    model = TabularMLP(D, hidden=8, layers=2)
    keys = list(model.state_dict())
    dp = DPSettings(
        noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="rdp"
    )
    result = train_dp(
        model, _data(scale=1.0), TrainSettings(epochs=2, batch_size=8), dp, CPU, seed=0
    )
    assert list(model.state_dict()) == keys
    assert result.steps == 2 * 5
    assert result.history == [(1.0, 8 / N, 10)]
    assert result.epsilon > 0


@pytest.mark.parametrize("grad_sampler", ["layers", "opacus"])
def test_dp_training_prints_no_library_warning(grad_sampler):
    dp = DPSettings(
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant="rdp",
        grad_sampler=grad_sampler,
    )
    model = TabularMLP(D, hidden=8, layers=2)
    with warnings.catch_warnings():
        # Opacus' secure-RNG advice and torch's full-backward-hook notice included
        warnings.simplefilter("error")
        result = train_dp(model, _data(scale=1.0), SGD, dp, CPU, seed=0)
    assert result.steps == 1


def test_batchnorm_models_are_rejected_not_silently_changed():
    model = nn.Sequential(nn.Linear(D, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="not compatible with DP-SGD"):
        check_dp_compatible(model)
