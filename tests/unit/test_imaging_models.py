"""Imaging networks: shapes in 2D/3D with 1 and 3 channels, DP-safety with Opacus."""

import warnings

import numpy as np
import pytest
import torch
from monai.networks.nets import ResNet
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from app.client.hospital import model_spec
from app.config import ConfigError, RunConfig
from data.spec import DatasetInfo
from models import MODELS, build_model
from models.imaging import IMAGING_MODELS, check_input_size
from models.training import predict_proba


def side(name: str) -> int:
    """The smallest convenient side each net accepts (DenseNet/EfficientNet: 32)."""
    return max(16, IMAGING_MODELS[name].min_size)


@pytest.mark.parametrize("name", sorted(IMAGING_MODELS))
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(name, dims, channels):
    model = build_model(name, spatial_dims=dims, in_channels=channels, num_classes=3)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, *([side(name)] * dims)))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(IMAGING_MODELS))
@pytest.mark.parametrize("dims", [2, 3])
def test_built_dp_safe_and_identical_keys(name, dims):
    model = build_model(name, spatial_dims=dims, in_channels=1, num_classes=2)
    ModuleValidator.validate(model, strict=True)  # raises on BatchNorm etc.
    assert not any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    # server and hospitals build the same keys (no running stats, no fix() renames)
    other = build_model(name, spatial_dims=dims, in_channels=1, num_classes=2)
    assert list(model.state_dict()) == list(other.state_dict())
    assert not any("running_" in k or "num_batches" in k for k in model.state_dict())


def test_stock_monai_resnet_is_caught_by_the_validator():
    """Negative control: MONAI's default ResNet (BatchNorm) is not DP-safe."""
    stock = ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[8, 16, 32, 64],
        spatial_dims=2,
        n_input_channels=1,
        num_classes=2,
    )
    assert ModuleValidator.validate(stock, strict=False)


def dp_step(model, dims, channels, size):
    x = torch.rand(6, channels, *([size] * dims))
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.5,
            max_grad_norm=1.0,
            poisson_sampling=False,
        )
        xb, yb = next(iter(loader))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        grad_samples = [p.grad_sample for p in model.parameters() if p.requires_grad]
        optimizer.step()
    # per-sample gradients existed for every trainable parameter
    assert all(g is not None and g.shape[0] == 3 for g in grad_samples)
    after = (
        model._module.state_dict() if hasattr(model, "_module") else model.state_dict()
    )
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the DP-SGD step changed no weight"


@pytest.mark.parametrize("name", sorted(IMAGING_MODELS))
def test_one_dp_sgd_step_2d(name):
    model = build_model(name, spatial_dims=2, in_channels=3, num_classes=2)
    dp_step(model, 2, 3, side(name))


@pytest.mark.parametrize("name", ["poolcnn", "smallcnn", "resnet10"])
def test_one_dp_sgd_step_3d(name):
    model = build_model(name, spatial_dims=3, in_channels=1, num_classes=2)
    dp_step(model, 3, 1, 16)


def test_too_small_images_name_the_minimum():
    with pytest.raises(ValueError, match="densenet121' needs images of at least 32"):
        check_input_size("densenet121", (1, 28, 28))
    check_input_size("smallcnn", (1, 28, 28))


def test_model_spec_from_dataset_info():
    cfg = RunConfig(task="imaging", dataset="synthetic-lesions")
    assert cfg.model_name == "poolcnn"
    spec = model_spec(cfg, DatasetInfo("imaging", (3, 28, 28), 4))
    assert spec.kwargs == {
        "spatial_dims": 2,
        "in_channels": 3,
        "num_classes": 4,
        "tta": "none",
        # the architecture's own defaults are recorded too
        "channels": (32, 64, 128),
        "depth": 2,
        "dropout": 0.3,
    }
    spec3 = model_spec(
        cfg.replace(model="resnet10"), DatasetInfo("imaging", (1, 28, 28, 28), 2)
    )
    assert spec3.kwargs["spatial_dims"] == 3
    assert spec3.build()(torch.rand(1, 1, 28, 28, 28)).shape == (1, 2)
    with pytest.raises(ValueError, match="at least 32"):
        model_spec(
            cfg.replace(model="efficientnet-b0"), DatasetInfo("imaging", (1, 28, 28), 2)
        )


def test_every_imaging_model_is_registered_for_the_imaging_task():
    assert {n for n, r in MODELS.items() if r.task == "imaging"} == set(IMAGING_MODELS)


def test_flip_tta_averages_the_mirror_view_with_the_same_weights():
    torch.manual_seed(0)
    plain = build_model("poolcnn", spatial_dims=2, in_channels=1, num_classes=2)
    tta = build_model(
        "poolcnn", spatial_dims=2, in_channels=1, num_classes=2, tta="flip"
    )
    assert list(plain.state_dict()) == list(tta.state_dict())
    tta.load_state_dict(plain.state_dict())
    x = torch.rand(5, 1, 28, 28)
    cpu = torch.device("cpu")
    mirrored = predict_proba(plain, x.flip(-1), cpu)
    expected = (predict_proba(plain, x, cpu) + mirrored) / 2
    got = predict_proba(tta, x, cpu)
    assert np.allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, predict_proba(plain, x, cpu), atol=1e-4)
    with pytest.raises(ConfigError, match="task='imaging' only"):
        RunConfig(tta="flip")


def test_saved_model_keeps_its_widths_when_class_defaults_change(tmp_path, monkeypatch):
    from data.spec import DatasetInfo
    from models import ModelSpec
    from models import imaging as imaging_models
    from models.checkpoint import load_model, save_model

    info = DatasetInfo("imaging", (1, 28, 28), num_classes=2)
    spec = ModelSpec("poolcnn", {"spatial_dims": 2, "in_channels": 1, "num_classes": 2})
    assert spec.kwargs["channels"] == (32, 64, 128)  # the whole architecture is kept
    model = spec.build()
    path = tmp_path / "final_model.pt"
    save_model(path, model.state_dict(), spec, info, run_config={}, preprocessing={})
    # A later version with other default widths still rebuilds the saved network.
    original = imaging_models.PoolCNN.__init__.__defaults__
    monkeypatch.setattr(
        imaging_models.PoolCNN.__init__,
        "__defaults__",
        (2, 1, 2, (8, 16, 32), 2, 0.3),
    )
    assert original[3] == (32, 64, 128)
    loaded, payload = load_model(path)
    assert payload["model"]["kwargs"]["channels"] == (32, 64, 128)
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    assert torch.equal(loaded(x), model(x))
