"""ServerApp path for ``task = "vertical"``: PSI relay and split-model coordination.

The server sends ``query.psi_*`` and ``query.vfl_*`` messages through the Grid and
relays what comes back; it holds neither data nor model weights, so a vertical
run writes ``history.json`` (per-epoch metrics reported by the label holder and
the alignment counts) but no ``final_model.pt``: each hospital's part of the model
stays in its own ``context.state``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from app.config import RunConfig
from app.server.exchange import send_and_receive
from app.server.history import RoundEntry
from app.server.outputs import RunRecorder
from app.vertical.client import PAYLOAD, TENSORS
from app.vertical.coordinator import (
    Tensors,
    VerticalPlan,
    VerticalProtocolError,
    run_vertical_training,
)

log = logging.getLogger(__name__)


class GridTransport:
    """Sends vertical-FL actions as ``query.<action>`` Messages through a Grid."""

    def __init__(self, grid: Grid, timeout: float) -> None:
        self.grid, self.timeout = grid, timeout
        self.group = 0

    def __call__(
        self, requests: Sequence[tuple[int, str, dict[str, Any], Tensors]]
    ) -> list[tuple[dict[str, Any], Tensors]]:
        self.group += 1
        messages = []
        for node, action, payload, tensors in requests:
            content = RecordDict({PAYLOAD: ConfigRecord(payload)})
            if tensors:
                content[TENSORS] = ArrayRecord(
                    {k: v.detach().cpu() for k, v in tensors.items()}
                )
            messages.append(
                Message(
                    content=content,
                    dst_node_id=node,
                    message_type=f"query.{action}",
                    group_id=str(self.group),
                )
            )
        replies = {
            m.metadata.src_node_id: m
            for m in send_and_receive(self.grid, messages, self.timeout)
        }
        out = []
        for node, action, _, _ in requests:
            reply = replies.get(node)
            if reply is None:
                raise VerticalProtocolError(f"node {node} sent no reply to {action}.")
            if reply.has_error():
                raise VerticalProtocolError(
                    f"node {node} failed {action}: {reply.error.reason}"
                )
            tensors = (
                reply.content.array_records[TENSORS].to_torch_state_dict()
                if TENSORS in reply.content.array_records
                else {}
            )
            out.append((dict(reply.content.config_records.get(PAYLOAD, {})), tensors))
        return out


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """All connected nodes once at least ``minimum`` are there."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise VerticalProtocolError(
                f"only {len(nodes)} of the {minimum} hospitals ('min-hospitals') "
                "connected."
            )
        time.sleep(1.0)


def run_vertical(grid: Grid, context: Context) -> None:
    """Align the hospitals' patients by PSI and train the split model."""
    cfg = RunConfig.from_run_config(context.run_config)
    torch.manual_seed(cfg.seed)
    nodes = wait_for_nodes(grid, max(cfg.min_hospitals, 2), cfg.round_timeout)
    recorder = RunRecorder(cfg, context.run_id)
    log.info(
        "medflower vertical run %s: %d hospitals, %d epochs, writing to %s",
        recorder.history.run_name,
        len(nodes),
        cfg.num_server_rounds,
        recorder.dir,
    )
    plan = VerticalPlan(
        epochs=cfg.num_server_rounds,
        batch_size=cfg.batch_size,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
    )

    def on_epoch(entry: dict[str, Any]) -> None:
        recorder.record_round(RoundEntry.from_json(entry, "vertical epoch"))
        m = entry["server"]
        log.info(
            "[epoch %d/%d] train_loss=%.4f accuracy=%.4f auc=%.4f (%.1fs)",
            entry["round"],
            cfg.num_server_rounds,
            entry["train_loss"],
            m.get("accuracy", float("nan")),
            m.get("auc", float("nan")),
            entry["elapsed_s"],
        )

    try:
        result = run_vertical_training(
            GridTransport(grid, cfg.round_timeout), nodes, plan, on_epoch
        )
    except BaseException:
        recorder.finish("failed")
        raise
    report = result.alignment
    log.info(
        "PSI alignment: %d patients shared by all %d hospitals (%.1f s, %d bytes)",
        report.intersection_size,
        len(nodes),
        report.seconds,
        report.bytes_relayed,
    )
    final = result.history[-1]["server"] if result.history else {}
    recorder.finish(
        "completed",
        final_server_metrics=final,
        vertical={
            "aligned_patients": report.intersection_size,
            "chain_counts": report.chain_counts,
            "psi_seconds": report.seconds,
            "psi_bytes_relayed": report.bytes_relayed,
            "train_patients": result.num_train,
            "test_patients": result.num_test,
            "training_bytes_relayed": result.bytes_relayed_training,
        },
    )
    log.info("Vertical run finished. Outputs: %s", recorder.dir)
