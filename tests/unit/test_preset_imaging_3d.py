"""The imaging-3d preset file: declared keys, valid values, a 3D run it can build."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from app.client.hospital import model_spec
from app.config import RunConfig
from data.imaging import image_info, prepare_images

PRESET = Path(__file__).resolve().parents[2] / "app/config/presets/imaging-3d.toml"


def test_imaging_3d_preset_is_a_valid_flat_run_config_for_3d_volumes():
    values = tomllib.loads(PRESET.read_text())
    assert all(not isinstance(v, dict) for v in values.values())  # flat keys
    cfg = RunConfig.from_run_config({**values, "data-path": "/data/volumes.npz"})
    saved = cfg.to_run_config()
    assert {k: saved[k] for k in values} == values
    # the FedSGD form: one plain step at rate 1 per round, Adam at the server
    assert (cfg.local_steps, cfg.optimizer, cfg.learning_rate, cfg.momentum) == (
        1,
        "sgd",
        1.0,
        0.0,
    )
    assert cfg.strategy == "fedadam"
    # version 2: the saved model is the best evaluated round's on the hospitals'
    # held-out shares, so the run must evaluate more than once
    assert cfg.select_best == "loss" and cfg.fraction_evaluate > 0
    assert cfg.evaluation_interval < cfg.num_server_rounds
    # a 28^3 volume is resized to the preset's side and fits its network
    volumes = np.zeros((2, 1, 28, 28, 28), np.uint8)
    x = prepare_images(volumes, cfg.image_size)
    info = image_info(x.shape[1:], 2, ("0", "1"), "volumes")
    model = model_spec(cfg, info).build()
    import torch

    assert model(torch.as_tensor(x)).shape == (2, 2)
