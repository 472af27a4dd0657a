"""A bare ServerApp: per round, one train and one evaluate message per hospital."""

from __future__ import annotations

import time

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _wait_for(grid: Grid, count: int, timeout: float = 300.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {count} hospitals connected")
        time.sleep(0.5)
    return sorted(nodes)[:count]


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Send the model to every hospital and wait for all replies, each round."""
    cfg = context.run_config
    nodes = _wait_for(grid, int(cfg["num-hospitals"]))
    model = torch.nn.Linear(int(cfg["num-features"]), 2)
    for server_round in range(1, int(cfg["num-server-rounds"]) + 1):
        for kind in (MessageType.TRAIN, MessageType.EVALUATE):
            messages = [
                Message(
                    RecordDict(
                        {
                            "arrays": ArrayRecord(model.state_dict()),
                            "config": ConfigRecord({"server-round": server_round}),
                        }
                    ),
                    dst_node_id=node,
                    message_type=kind,
                )
                for node in nodes
            ]
            replies = list(grid.send_and_receive(messages))
            if any(reply.has_error() for reply in replies):
                raise RuntimeError(f"a bare hospital failed in round {server_round}")
