"""Shared helpers for the secure aggregation tests: a Grid that records every reply
as it crossed the wire, and one-round strategy runs on the real ClientApp."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.serde import message_to_proto

from app.client.hospital import model_spec
from app.client_app import app as real_client
from app.config import RunConfig
from data.registry import get_dataset
from scripts.harness.inprocess import InProcessGrid, full_run_config
from strategies.fedavg import MedFedAvg


@dataclass
class CaptureGrid(InProcessGrid):
    """InProcessGrid that keeps every reply (and its wire bytes) sent to the server."""

    replies: list[Message] = field(default_factory=list)
    wire_up: list[bytes] = field(default_factory=list)

    def _wire(
        self, message: Message, node_id: int, direction: str, message_id: str = ""
    ) -> Message:
        out = super()._wire(message, node_id, direction, message_id)
        if direction == "up":
            self.replies.append(out)
            self.wire_up.append(message_to_proto(message).SerializeToString())
        return out


def run_config(tmp_path: Any, **overrides: Any) -> dict[str, Any]:
    base = {"output-dir": str(tmp_path / "outputs"), "run-name": "test-run"}
    base.update(overrides)
    return full_run_config(**base)


def initial_arrays(config: dict[str, Any]) -> ArrayRecord:
    cfg = RunConfig.from_run_config(config)
    info = get_dataset(cfg.data_spec()).info()
    torch.manual_seed(cfg.seed)
    return ArrayRecord(model_spec(cfg, info).build().state_dict())


def one_round(
    config: dict[str, Any], num_hospitals: int, secure: Any = None, **grid_kwargs: Any
) -> tuple[ArrayRecord, CaptureGrid, MedFedAvg]:
    """One FedAvg round from the seeded initial model; returns the new global model."""
    grid = CaptureGrid(real_client, num_hospitals, config, **grid_kwargs)
    strategy = MedFedAvg(min_hospitals=2, secure=secure)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(config),
        num_rounds=1,
        train_config=ConfigRecord({"proximal-mu": 0.0}),
    )
    return result.arrays, grid, strategy


def plain_updates(grid: CaptureGrid) -> dict[int, dict[str, np.ndarray]]:
    """Each hospital's plain trained arrays from a plain run's train replies."""
    out = {}
    for msg in grid.replies:
        if msg.metadata.message_type == "train" and not msg.has_error():
            out[msg.metadata.src_node_id] = {
                k: v.numpy() for k, v in msg.content["arrays"].items()
            }
    return out


def weights_of(grid: CaptureGrid) -> dict[int, float]:
    return {
        m.metadata.src_node_id: float(m.content["metrics"]["num-examples"])
        for m in grid.replies
        if m.metadata.message_type == "train" and not m.has_error()
    }


def fedavg(
    updates: dict[int, dict[str, np.ndarray]],
    weights: dict[int, float],
    nodes: list[int],
) -> dict[str, np.ndarray]:
    total = sum(weights[n] for n in nodes)
    keys = updates[nodes[0]].keys()
    return {
        k: sum(weights[n] * updates[n][k].astype(np.float64) for n in nodes) / total
        for k in keys
    }


def max_diff(arrays: ArrayRecord, expected: dict[str, np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(arrays[k].numpy().astype(np.float64) - v)))
        for k, v in expected.items()
    )
