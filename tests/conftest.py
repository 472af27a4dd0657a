"""Shared fixtures: real data location, task identity, public bounds, training spy.

Helper functions live in :mod:`support` (``tests/support/``), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity
from support.federation import WDBC_BOUNDS, shared_data_dir

torch.set_num_threads(1)


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


@pytest.fixture
def wdbc_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declare public bounds for WDBC for the duration of a test."""
    from data.tabular import WDBCDataset

    monkeypatch.setattr(WDBCDataset, "feature_bounds", WDBC_BOUNDS)


@pytest.fixture
def client_training(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict]]:
    """Record every ClientApp training call: ``(TrainSettings, returned stats)``."""
    # the ClientApp trains through its personalization method (plain: base.Method)
    import app.personalization.base as client_module

    calls: list[tuple[Any, dict]] = []
    train = client_module.train_epochs

    def spy(model, loader, settings, device, optimizer=None, anchor=None):  # noqa: ANN001
        out = train(model, loader, settings, device, optimizer, anchor)
        calls.append((settings, out))
        return out

    monkeypatch.setattr(client_module, "train_epochs", spy)
    return calls
