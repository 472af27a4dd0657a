"""Per-sample gradients (app.privacy.per_sample) equal Opacus' and per-record ones."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from torch import nn

from app.privacy.dp_sgd import FULL_HOOK_WARNING, DPSettings, train_dp
from app.privacy.per_sample import (
    UnsupportedLayer,
    per_sample_layers,
    unsupported_layers,
)
from data.spec import Split
from models import MODELS, build_model
from models.imaging import IMAGING_MODELS
from models.training import TrainSettings

CPU = torch.device("cpu")


def _no_dropout(model: nn.Module) -> nn.Module:
    """Dropout draws differ between two forward passes; switch it off to compare."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _case(name: str, dims: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    if MODELS[name].task == "tabular":
        model, x = build_model(name, in_features=7, num_classes=3), torch.randn(5, 7)
    else:
        side = max(16, IMAGING_MODELS[name].min_size) if dims == 2 else 8
        model = build_model(name, spatial_dims=dims, in_channels=2, num_classes=3)
        x = torch.randn(5, 2, *([side] * dims))
    return _no_dropout(model).train(), x, torch.tensor([0, 1, 2, 1, 0])


def _opacus_grad_samples(model, x, y, reduction="mean"):
    reference = GradSampleModule(copy.deepcopy(model), loss_reduction=reduction)
    torch.manual_seed(1)  # EfficientNet's drop-connect draws
    with warnings.catch_warnings():
        # torch's notice on Opacus' hooks when the input needs no gradient (the
        # product filters it in app.privacy's private_training; this is the
        # reference, driven here outside it)
        warnings.filterwarnings("ignore", FULL_HOOK_WARNING, UserWarning)
        nn.functional.cross_entropy(reference(x), y, reduction=reduction).backward()
    return {n: p.grad_sample for n, p in reference._module.named_parameters()}


def _ours(model, x, y, reduction="mean"):
    keys = list(model.state_dict())
    with per_sample_layers(model, loss_reduction=reduction):
        assert list(model.state_dict()) == keys  # same names inside the block
        torch.manual_seed(1)
        nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
    return {n: p.grad_sample for n, p in model.named_parameters()}


def _assert_close(ours, reference):
    assert ours.keys() == reference.keys()
    for name, grad in ours.items():
        ref = reference[name]
        assert grad.shape == ref.shape, name
        scale = float(ref.abs().max()) + 1e-12
        assert float((grad - ref).abs().max()) <= 1e-4 * scale, name


# record-level models (x -> logits); recommenders clip per patient instead
# (app/recommendation/dp.py, tests/unit/test_patient_dp.py)
CASES = [
    (name, 2) for name in sorted(MODELS) if MODELS[name].task != "recommendation"
] + [(name, 3) for name in ("poolcnn", "poolcnn-small", "resnet10")]


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_every_model_matches_opacus_hooks(name, dims):
    model, x, y = _case(name, dims)
    assert unsupported_layers(model) == []
    classes = [type(m) for m in model.modules()]
    reference = _opacus_grad_samples(model, x, y)
    ours = _ours(model, x, y)
    _assert_close(ours, reference)
    assert all(p.grad is None for p in model.parameters())  # no summed gradient
    assert [type(m) for m in model.modules()] == classes  # own layers back


def test_sum_reduction_gives_each_records_own_gradient():
    model, x, y = _case("poolcnn-small")
    ours = _ours(model, x, y, reduction="sum")
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            assert torch.allclose(ours[name][i], p.grad, atol=1e-5), name


def test_a_layer_used_twice_accumulates_like_opacus():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))

    torch.manual_seed(0)
    model, x, y = Twice(), torch.randn(6, 4), torch.tensor([0, 1] * 3)
    _assert_close(_ours(model, x, y), _opacus_grad_samples(model, x, y))


def test_an_empty_batch_gives_zero_per_sample_gradients():
    model, x, _ = _case("poolcnn")
    with per_sample_layers(model):
        (model(x[:0]).sum() * 0.0).backward()
    for p in model.parameters():
        assert p.grad_sample.shape == (1, *p.shape)
        assert not p.grad_sample.any()


def test_unsupported_layers_are_named_and_nothing_is_replaced():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"),
        nn.Flatten(),
        nn.Bilinear(4, 4, 2),
    )
    problems = unsupported_layers(model)
    assert len(problems) == 2
    assert problems[0].startswith("0: Conv2d") and "reflect" in problems[0]
    assert problems[1] == "2: Bilinear"
    with pytest.raises(UnsupportedLayer, match="Bilinear"):
        with per_sample_layers(model):
            pass
    assert isinstance(model[0], nn.Conv2d)


def test_original_layers_come_back_after_an_error():
    model, x, _ = _case("logreg")
    layer = (
        model.linear
        if hasattr(model, "linear")
        else next(m for m in model.modules() if isinstance(m, nn.Linear))
    )
    with pytest.raises(RuntimeError, match="boom"):
        with per_sample_layers(model):
            raise RuntimeError("boom")
    assert any(m is layer for m in model.modules())


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_dp_training_is_the_same_with_either_sampler(sigma):
    """Same seed, same Poisson batches and noise: the engines agree on the result."""
    rng = np.random.default_rng(0)
    split = Split(
        rng.normal(size=(24, 1, 12, 12)).astype(np.float32),
        rng.integers(0, 2, size=24),
    )
    settings = TrainSettings(epochs=2, batch_size=8, learning_rate=0.05)
    weights = {}
    for sampler in ("layers", "opacus"):
        torch.manual_seed(0)
        model = _no_dropout(build_model("poolcnn-small", in_channels=1))
        dp = DPSettings(
            noise_multiplier=sigma, max_grad_norm=0.5, delta=1e-5, grad_sampler=sampler
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = train_dp(model, split, settings, dp, CPU, seed=4)
        weights[sampler] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert result.steps == 6
    before = torch.cat(
        [p.detach().flatten() for p in build_model("poolcnn-small").parameters()]
    )
    assert not torch.allclose(weights["layers"], before)
    assert torch.allclose(weights["layers"], weights["opacus"], atol=1e-5)


def test_a_model_without_rules_falls_back_to_opacus_hooks(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2))
    split = Split(np.ones((8, 3), np.float32), np.array([0, 1] * 4))
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=1.0, delta=1e-5)
    with caplog.at_level("INFO", logger="app.privacy.dp_sgd"):
        train_dp(model, split, TrainSettings(epochs=1, batch_size=4), dp, CPU)
    assert "no per-layer rule for 1: PReLU" in caplog.text
    assert isinstance(model[0], nn.Linear)


def test_book_keeping_defers_small_maps_with_exact_norms_and_clipped_sums():
    """poolcnn at 28x28: the 7x7 convolutions keep Gram norms, not gradients."""
    torch.manual_seed(0)
    model = _no_dropout(build_model("poolcnn", in_channels=2, num_classes=3))
    x = torch.randn(6, 2, 28, 28)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    reference = _opacus_grad_samples(model, x, y)
    with per_sample_layers(model, book_keeping=True):
        nn.functional.cross_entropy(model(x), y).backward()
        deferred = {
            n: p.deferred
            for n, p in model.named_parameters()
            if getattr(p, "deferred", None) is not None
        }
        assert sorted(deferred) == ["features.6.conv.weight", "features.7.conv.weight"]
        factors = torch.rand(6)
        for name, d in deferred.items():
            expected = reference[name].flatten(1).square().sum(1)
            assert torch.allclose(d.norms2, expected, rtol=1e-4)
            clipped = d.layer.clipped_weight_sum(d, factors)
            assert torch.allclose(
                clipped, torch.einsum("i,i...", factors, reference[name]), atol=1e-5
            )
        others = [n for n in reference if n not in deferred]
        _assert_close(
            {n: p.grad_sample for n, p in model.named_parameters() if n in others},
            {n: reference[n] for n in others},
        )
    assert all(getattr(p, "deferred", None) is None for p in model.parameters())


def test_book_keeping_materialises_a_convolution_used_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(64, 64, 3, padding=1)
            self.head = nn.Linear(64, 2)

        def forward(self, x):
            x = self.conv(torch.tanh(self.conv(x)))
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model, x, y = Twice(), torch.randn(4, 64, 5, 5), torch.tensor([0, 1, 1, 0])
    reference = _opacus_grad_samples(model, x, y)
    with per_sample_layers(model, book_keeping=True):
        nn.functional.cross_entropy(model(x), y).backward()
        assert getattr(model.conv.weight, "deferred", None) is None
        ours = {n: p.grad_sample for n, p in model.named_parameters()}
    _assert_close(ours, reference)
