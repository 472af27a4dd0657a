"""The ``shape`` network: its descriptors, their pooled standardisation, its limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.client.input_stats import input_statistics
from app.config import ConfigError, RunConfig
from models import MODELS, build_model
from models.shape import (
    EPS,
    descriptor_count,
    descriptor_sums,
    fit_statistics,
    pooled_statistics,
    shape_descriptors,
)

SIDE = 16


def _box(lengths: tuple[int, int, int], origin: tuple[int, int, int] = (2, 2, 2)):
    volume = np.zeros((1, SIDE, SIDE, SIDE), np.float32)
    z, y, x = origin
    dz, dy, dx = lengths
    volume[0, z : z + dz, y : y + dy, x : x + dx] = 1.0
    return volume


def _named(volume: np.ndarray) -> dict[str, np.ndarray]:
    values = shape_descriptors(torch.as_tensor(volume[None]))[0].numpy()
    parts = np.split(values, np.cumsum([1, 3, 3, 1, 1, 3, 3]))
    keys = ("log_fraction", "centroid", "log_moments", "log_surface", "log_sphericity")
    keys = (*keys, "log_projection", "log_extent", "log_largest")
    return dict(zip(keys, parts[: len(keys)], strict=True))


def test_descriptors_measure_a_box_exactly():
    box = _named(_box((4, 6, 8)))
    assert box["log_fraction"][0] == pytest.approx(math.log(4 * 6 * 8 / SIDE**3), 1e-3)
    # extents along z, y, x; projections along each axis; largest slices
    assert np.exp(box["log_extent"]) == pytest.approx([4 / 16, 6 / 16, 8 / 16], 1e-3)
    assert np.exp(box["log_projection"]) == pytest.approx(
        [48 / 256, 32 / 256, 24 / 256], abs=2e-4
    )
    # a box's largest slice across each axis is its projection along it
    assert np.exp(box["log_largest"]) == pytest.approx(
        np.exp(box["log_projection"]), 1e-6
    )
    # principal second moments sorted, longest first: var of a uniform side L
    # sampled on [-1, 1] at step 2/16 is ((L*2/16)^2 - (2/16)^2) / 12, plus the
    # EPS the covariance is regularised with
    expected = [((n * 2 / SIDE) ** 2 - (2 / SIDE) ** 2) / 12 + EPS for n in (8, 6, 4)]
    assert np.exp(2 * box["log_moments"]) == pytest.approx(expected, 1e-3)


def test_descriptors_of_a_moved_box_differ_only_in_its_centroid():
    here, there = _named(_box((3, 5, 7))), _named(_box((3, 5, 7), (9, 6, 4)))
    for key in here:
        if key != "centroid":
            assert here[key] == pytest.approx(there[key], abs=1e-4), key
    assert not np.allclose(here["centroid"], there["centroid"])


def test_a_thin_plate_has_more_surface_per_volume_than_a_cube():
    plate, cube = _named(_box((1, 12, 12))), _named(_box((5, 5, 5)))
    assert plate["log_surface"] > cube["log_surface"]
    assert plate["log_sphericity"] > cube["log_sphericity"]


def test_descriptors_are_finite_for_empty_2d_and_multichannel_images():
    assert torch.isfinite(shape_descriptors(torch.zeros(2, 1, 8, 8, 8))).all()
    flat = shape_descriptors(torch.rand(3, 2, 10, 10))
    assert flat.shape == (3, 2 * descriptor_count(2)) and torch.isfinite(flat).all()


def test_pooled_hospital_sums_give_the_pooled_mean_and_std():
    rng = np.random.default_rng(0)
    images = (rng.random((30, 1, 8, 8, 8)) > 0.7).astype(np.float32)
    raw = shape_descriptors(torch.as_tensor(images)).double().numpy()
    parts = [descriptor_sums(images[a:b]) for a, b in ((0, 7), (7, 19), (19, 30))]
    count = sum(p[0] for p in parts)
    mean, std = pooled_statistics(
        count, sum(p[1] for p in parts), sum(p[2] for p in parts)
    )
    assert count == 30
    assert mean == pytest.approx(raw.mean(0), rel=1e-6, abs=1e-9)
    spread = raw.std(0)
    assert std == pytest.approx(np.where(spread > 1e-6, spread, 1.0), rel=1e-4)


def test_the_network_standardises_then_applies_its_head():
    rng = np.random.default_rng(1)
    images = (rng.random((12, 1, 8, 8, 8)) > 0.6).astype(np.float32)
    model = build_model("shape", spatial_dims=3, in_channels=1, num_classes=3)
    fit_statistics(model, images)
    x = torch.as_tensor(images)
    features = model.descriptors(x)
    assert features.mean(0).abs().max() < 1e-4  # standardised on these images
    with torch.no_grad():
        assert torch.allclose(model(x), model.head(features), atol=1e-6)
    # the statistics are buffers: they travel with the model's arrays
    assert {"descriptors.mean", "descriptors.scale"} <= set(model.state_dict())
    assert "descriptors.mean" not in dict(model.named_parameters())


def test_a_hospital_releases_nothing_below_its_minimum():
    images = np.zeros((5, 1, 8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="fewer than 6"):
        input_statistics(images, min_records=6)
    record = input_statistics(images, min_records=5)
    assert record["count"] == [5.0] and len(record["sums"]) == descriptor_count(3)


@pytest.mark.parametrize(
    "override",
    [
        {"dp": "local", "dp-noise-multiplier": 1.0},
        {"secure-aggregation": True, "min-hospitals": 3},
        {"update-encoding": "int8"},
    ],
)
def test_the_run_config_refuses_shape_under_dp_secagg_or_int8(override):
    assert MODELS["shape"].input_stats
    base = {"task": "imaging", "dataset": "medmnist", "model": "shape"}
    base = {**base, "data-path": "/data/volumes.npz", "preset": "none"}
    RunConfig.from_run_config(base)  # fine on its own
    with pytest.raises(ConfigError, match="model='shape'"):
        RunConfig.from_run_config({**base, **override})
