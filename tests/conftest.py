"""Shared fixtures: real data location, in-process federation, message builders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from app.inprocess import full_run_config

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)


def shared_data_dir() -> Path:
    """``$MEDFLOWER_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(
        os.environ.get("MEDFLOWER_SHARED_DATA") or REPO.parent / "shared" / "data"
    )


@pytest.fixture
def shared_data() -> Path:
    """The real benchmark data; tests using it skip when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def heart_dir(shared_data: Path) -> Path:
    path = shared_data / "heart-disease"
    if not (path / "processed.cleveland.data").is_file():
        pytest.skip(f"heart-disease files not found in {path}")
    return path


@pytest.fixture
def task_identity() -> None:
    """Messages built outside a SuperLink need a task identity (Flower >= 1.41)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def evaluate_cli(**options: Any) -> int:
    """Run ``medflower evaluate --key value ...`` (``True``: a bare flag); exit code."""
    from scripts.cli import main

    argv = ["evaluate"]
    for key, value in options.items():
        argv.append(f"--{key.replace('_', '-')}")
        if value is not True:
            argv.append(str(value))
    return main(argv)


def make_run_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Full run config writing outputs under ``tmp_path``; kebab-case overrides."""
    base = {"output-dir": str(tmp_path / "outputs"), "run-name": "test-run"}
    base.update(overrides)
    return full_run_config(**base)


def make_context(
    run_config: dict[str, Any],
    partition_id: int = 0,
    num_partitions: int = 2,
    node_config: dict[str, Any] | None = None,
) -> Context:
    return Context(
        run_id=1,
        node_id=101 + partition_id,
        node_config=node_config
        or {"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=run_config,
    )


def make_message(
    model: torch.nn.Module,
    message_type: str = MessageType.TRAIN,
    config: dict[str, Any] | None = None,
    dst_node_id: int = 101,
) -> Message:
    """A server instruction carrying ``model``'s weights, as a hospital receives it."""
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "config": ConfigRecord(config or {"server-round": 1}),
        }
    )
    return Message(content=content, message_type=message_type, dst_node_id=dst_node_id)


# Wide, data-independent public bounds for WDBC (it ships none), so the global
# normalisations (dp-global, public-bounds) can run on the bundled data.
WDBC_BOUNDS = tuple((0.0, 5000.0) for _ in range(30))


@pytest.fixture
def wdbc_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declare public bounds for WDBC for the duration of a test."""
    from data.tabular import WDBCDataset

    monkeypatch.setattr(WDBCDataset, "feature_bounds", WDBC_BOUNDS)


def dp_federation_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A short local-DP logistic-regression federation (epsilon 1, delta 1e-3)."""
    return make_run_config(
        tmp_path,
        dp="local",
        **{
            "dp-target-epsilon": 1.0,
            "dp-delta": 1e-3,
            "num-server-rounds": 2,
            "batch-size": 64,
            "learning-rate": 0.2,
            "momentum": 0.5,
            "model": "logreg",
            "report": False,
            **overrides,
        },
    )


@pytest.fixture
def client_training(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict]]:
    """Record every ClientApp training call: ``(TrainSettings, returned stats)``."""
    import app.client_app as client_module

    calls: list[tuple[Any, dict]] = []
    train = client_module.train_epochs

    def spy(model, loader, settings, device, optimizer=None):  # noqa: ANN001
        out = train(model, loader, settings, device, optimizer)
        calls.append((settings, out))
        return out

    monkeypatch.setattr(client_module, "train_epochs", spy)
    return calls
