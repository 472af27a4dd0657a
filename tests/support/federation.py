"""Helpers shared by the tests: repo paths, run configs, messages and contexts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)

from scripts.harness.inprocess import full_run_config

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """``$MEDFLOWER_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(
        os.environ.get("MEDFLOWER_SHARED_DATA") or REPO.parent / "shared" / "data"
    )


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
