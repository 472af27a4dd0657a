"""The bad-input catalogue: each fault gives a clear error naming what and where,
and when the fault is one hospital's, the federation carries on without it.

Federation-level cases run the real ServerApp/ClientApp in-process; deployed
hospitals are modelled with a ``data-path`` node config, as on a SuperNode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from sklearn.datasets import load_breast_cancer
from support.federation import make_run_config

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.server.checkpoints import CheckpointError, load_checkpoint
from app.server.federation import run_federation
from data.imaging import list_image_folder, load_images
from data.registry import get_dataset
from data.spec import DataError
from data.tabular import read_labelled_csv
from scripts.cli import main as cli
from scripts.harness.inprocess import InProcessGrid, server_context

# ----------------------------------------------------------------------------- helpers


def wdbc_frame() -> pd.DataFrame:
    bunch = load_breast_cancer()
    frame = pd.DataFrame(
        bunch.data, columns=[f"f{i}" for i in range(bunch.data.shape[1])]
    )
    frame["target"] = 1 - bunch.target
    return frame


def write_sites(tmp_path: Path, n: int = 3) -> tuple[Path, list[Path]]:
    """A pooled CSV for the server and ``n`` hospital CSVs (disjoint rows)."""
    frame = wdbc_frame().sample(frac=1.0, random_state=0).reset_index(drop=True)
    pooled = tmp_path / "pooled.csv"
    frame.to_csv(pooled, index=False)
    sites = []
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), n)):
        part = frame.iloc[rows]
        path = tmp_path / f"site{i}.csv"
        part.to_csv(path, index=False)
        sites.append(path)
    return pooled, sites


def run_deployed(
    tmp_path: Path,
    node_configs: list[dict[str, Any]],
    client=client_app,
    **overrides: Any,
):
    config = make_run_config(
        tmp_path,
        **{
            "num-server-rounds": 2,
            "min-hospitals": 2,
            "fraction-evaluate": 1.0,
            **overrides,
        },
    )
    grid = InProcessGrid(client, len(node_configs), config, node_configs=node_configs)
    context = server_context(config)
    outcome = run_federation(grid, context)
    return outcome, json.loads((outcome.recorder.dir / "history.json").read_text())


def csv_federation(tmp_path: Path, break_site) -> tuple[Any, dict[str, Any]]:
    """Three deployed CSV hospitals; ``break_site(path)`` damages site 2's file."""
    pooled, sites = write_sites(tmp_path)
    break_site(sites[2])
    nodes = [
        {"data-path": str(p), "hospital-name": f"site-{i}"} for i, p in enumerate(sites)
    ]
    return run_deployed(tmp_path, nodes, dataset="csv", **{"data-path": str(pooled)})


def assert_survived_without(history: dict[str, Any], name: str, reason: str) -> None:
    assert history["status"] == "completed"
    for entry in history["rounds"][1:]:
        assert reason in entry["errors"][name]["reason"]
        assert set(entry["hospitals"]) == {"site-0", "site-1"}
    # Privacy: what left the hospital names no file.
    assert "/" not in json.dumps(history["rounds"][1]["errors"])


# ------------------------------------------------------------------- one bad hospital


def put_inf(path: Path) -> None:
    frame = pd.read_csv(path)
    frame.loc[3, "f5"] = np.inf
    frame.to_csv(path, index=False)


def drop_label(path: Path) -> None:
    pd.read_csv(path).drop(columns=["target"]).to_csv(path, index=False)


def label_outside(path: Path) -> None:
    frame = pd.read_csv(path)
    frame.loc[0, "target"] = 5
    frame.to_csv(path, index=False)


def empty(path: Path) -> None:
    path.write_text(",".join(pd.read_csv(path).columns) + "\n")  # header only


def remove(path: Path) -> None:
    path.unlink()


def other_features(path: Path) -> None:
    pd.read_csv(path).drop(columns=["f0", "f1"]).to_csv(path, index=False)


@pytest.mark.parametrize(
    "damage,reason",
    [
        (put_inf, "infinite value in column 'f5'"),
        (drop_label, "missing label column 'target'"),
        (label_outside, "label 5 is outside the classes 0..1"),
        (empty, "no complete rows"),
        (remove, "data path not found"),
        (other_features, "input shape (28,) does not match the model's (30,)"),
    ],
    ids=[
        "inf-in-csv",
        "missing-label-column",
        "label-outside-classes",
        "empty-partition",
        "data-path-missing",
        "wrong-feature-count",
    ],
)
def test_one_hospitals_bad_csv_is_named_and_the_federation_survives(
    tmp_path: Path, damage, reason: str
) -> None:
    _, history = csv_federation(tmp_path, damage)
    assert_survived_without(history, "site-2", reason)


def test_local_errors_name_file_column_and_row(tmp_path: Path) -> None:
    _, sites = write_sites(tmp_path, 1)
    put_inf(sites[0])
    with pytest.raises(
        DataError, match=r"site0\.csv: infinite value in column 'f5', row 4"
    ):
        read_labelled_csv(sites[0], "target")
    drop_label(sites[0])
    with pytest.raises(
        DataError, match=r"site0\.csv: no label column 'target'; columns"
    ):
        read_labelled_csv(sites[0], "target")


def test_nan_rows_are_dropped_and_counted(tmp_path: Path, caplog) -> None:
    _, sites = write_sites(tmp_path, 1)
    frame = pd.read_csv(sites[0])
    frame.loc[[1, 2], "f7"] = np.nan
    frame.to_csv(sites[0], index=False)
    x, _, _ = read_labelled_csv(sites[0], "target")
    assert len(x) == len(frame) - 2 and np.isfinite(x).all()
    assert "dropped 2 of" in caplog.text


def test_empty_simulated_partition_is_refused_with_counts() -> None:
    cfg = RunConfig(dataset="wdbc")
    with pytest.raises(
        DataError, match="Cannot split 455 records across 1000 hospitals"
    ):
        get_dataset(cfg.data_spec()).hospital(0, 1000)


# ------------------------------------------------------------------------- imaging


def write_image_site(root: Path, channels: int = 1, n: int = 6, size: int = 16) -> Path:
    from PIL import Image

    rng = np.random.default_rng(len(str(root)))
    mode = "L" if channels == 1 else "RGB"
    for label in ("benign", "malignant"):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size) if channels == 1 else (size, size, channels)
            pixels = rng.integers(0, 255, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(folder / f"img{i}.png")
    return root


def test_corrupt_image_file_is_named(tmp_path: Path) -> None:
    site = write_image_site(tmp_path / "site")
    (site / "benign" / "img3.png").write_bytes(b"\x89PNG not really")
    files, _, _ = list_image_folder(site)
    with pytest.raises(DataError, match=r"img3\.png: cannot be read"):
        load_images(files, 16)


def test_image_of_other_channels_is_named(tmp_path: Path) -> None:
    site = write_image_site(tmp_path / "site")
    write_image_site(tmp_path / "rgb", channels=3, n=1)
    (tmp_path / "rgb" / "benign" / "img0.png").rename(site / "benign" / "zz_rgb.png")
    files, _, _ = list_image_folder(site)
    with pytest.raises(
        DataError, match=r"zz_rgb\.png: 3 channel\(s\) but img0\.png has 1"
    ):
        load_images(files, 16)


@pytest.mark.parametrize(
    "damage,reason",
    [
        ("corrupt", "an image file could not be read"),
        ("rgb", "input shape (3, 16, 16) does not match the model's (1, 16, 16)"),
    ],
)
def test_one_hospitals_bad_images_leave_the_federation_running(
    tmp_path: Path, damage: str, reason: str
) -> None:
    pooled = write_image_site(tmp_path / "pooled", n=10)
    sites = [write_image_site(tmp_path / f"site{i}") for i in range(2)]
    if damage == "corrupt":
        bad = write_image_site(tmp_path / "site2")
        (bad / "malignant" / "img1.png").write_bytes(b"garbage")
    else:
        bad = write_image_site(tmp_path / "site2", channels=3)
    nodes = [
        {"data-path": str(p), "hospital-name": f"site-{i}"}
        for i, p in enumerate([*sites, bad])
    ]
    _, history = run_deployed(
        tmp_path,
        nodes,
        task="imaging",
        dataset="image-folder",
        **{
            "data-path": str(pooled),
            "image-size": 16,
            "num-server-rounds": 1,
            "batch-size": 8,
            "augment": False,
        },
    )
    assert_survived_without(history, "site-2", reason)


# ------------------------------------------------------------- bad replies, failures


def tampering_client(target: int, tamper):
    """The real ClientApp, whose reply from node ``target`` is altered on the way."""

    def call(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        if (
            context.node_id == target
            and reply.has_content()
            and "arrays" in reply.content
        ):
            arrays = reply.content["arrays"]
            reply.content["arrays"] = ArrayRecord(
                tamper({k: a.numpy() for k, a in arrays.items()})
            )
        return reply

    return call


def with_nan(arrays: dict[str, np.ndarray]) -> dict[str, Array]:
    out = {k: Array(v.copy()) for k, v in arrays.items()}
    weight = arrays["linear.weight"].copy()
    weight[0, 0] = np.nan
    out["linear.weight"] = Array(weight)
    return out


def wrong_shape(arrays: dict[str, np.ndarray]) -> dict[str, Array]:
    out = {k: Array(v) for k, v in arrays.items()}
    out["linear.weight"] = Array(np.zeros((2, 7), dtype=np.float32))
    return out


@pytest.mark.parametrize(
    "tamper,reason",
    [
        (with_nan, "array 'linear.weight' holds NaN or infinite values"),
        (wrong_shape, "array 'linear.weight' has shape (2, 7), expected (2, 30)"),
    ],
    ids=["update-with-nan", "arrays-not-matching-model"],
)
def test_bad_update_is_rejected_and_the_rest_aggregated(
    tmp_path: Path, tamper, reason: str
) -> None:
    config = make_run_config(
        tmp_path, **{"num-server-rounds": 2, "fraction-evaluate": 0.0}
    )
    grid = InProcessGrid(tampering_client(102, tamper), 4, config)
    context = server_context(config)
    outcome = run_federation(grid, context)
    rounds = json.loads((outcome.recorder.dir / "history.json").read_text())["rounds"]
    assert outcome.status == "completed"
    for entry in rounds[1:]:
        assert entry["rejected"]["hospital-1"]["reason"] == reason
        assert len(entry["hospitals"]) == 3
    final = torch.load(outcome.recorder.model_path, weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in final.values())


def test_hospital_raising_mid_training_replies_an_error_without_detail(
    tmp_path: Path, monkeypatch
) -> None:
    import app.personalization.base as client_module  # the ClientApp's training

    real = client_module.train_epochs

    def explode_at_partition_3(model, loader, settings, device, *a, **kw):
        features = loader.dataset.tensors[0].numpy()
        if features.shape == TARGET.x.shape and np.allclose(features, TARGET.x):
            raise RuntimeError("CUDA error at /secret/path/patient_123")
        return real(model, loader, settings, device, *a, **kw)

    cfg = RunConfig()
    TARGET = get_dataset(cfg.data_spec()).hospital(3, 4).train  # noqa: N806
    monkeypatch.setattr(client_module, "train_epochs", explode_at_partition_3)
    config = make_run_config(
        tmp_path, **{"num-server-rounds": 2, "fraction-evaluate": 0.0}
    )
    grid = InProcessGrid(client_app, 4, config)
    context = server_context(config)
    outcome = run_federation(grid, context)
    rounds = json.loads((outcome.recorder.dir / "history.json").read_text())["rounds"]
    assert outcome.status == "completed"
    for entry in rounds[1:]:
        assert entry["errors"] == {
            "hospital-3": {
                "phase": "train",
                "reason": "hospital hospital-3: local train failed (RuntimeError)",
            }
        }
        assert len(entry["hospitals"]) == 3
    assert "patient_123" not in json.dumps(rounds)


# --------------------------------------------------------------- configuration, models


@pytest.mark.parametrize(
    "run_config,message",
    [
        ({"num-server-round": 3}, "Unknown run-config key(s): num-server-round"),
        ({"learning-rate": 0.0}, "'learning-rate' must be > 0.0, got 0.0"),
        ({"min-hospitals": 0}, "'min-hospitals' must be >= 1, got 0"),
        ({"round-timeout": "soon"}, "'round-timeout' must be a number, got 'soon'"),
        ({"deterministic": 1}, "'deterministic' must be true or false, got 1"),
    ],
)
def test_bad_run_config_names_the_key(run_config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config(run_config)
    assert message in str(err.value)


def test_saved_model_used_for_the_wrong_task_is_refused(
    tmp_path: Path, heart_dir: Path, capsys
) -> None:
    config = make_run_config(
        tmp_path, **{"num-server-rounds": 1, "fraction-evaluate": 0.0}
    )
    grid = InProcessGrid(client_app, 2, config)
    context = server_context(config)
    outcome = run_federation(grid, context)  # a WDBC model: 30 features
    code = cli(
        [
            "evaluate",
            "--model",
            str(outcome.recorder.model_path),
            "--data",
            str(heart_dir),
        ]
    )
    assert code == 2
    assert "expects 30 features" in capsys.readouterr().err


def test_resume_from_something_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "round-0001.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="round-0001.pt is not readable"):
        load_checkpoint(bogus)
    with pytest.raises(CheckpointError, match="no round-\\*.pt checkpoint"):
        load_checkpoint(tmp_path)
