"""The bare-Flower floor: a ClientApp that returns its input arrays untouched.

``medflower benchmark scale`` runs it with medflower's federation shape (as many
SuperNodes, arrays of the same sizes, as many rounds, a train and an evaluate
exchange per round, FedAvg) so that medflower's time over this app's time is the
cost of medflower itself rather than of Flower, Ray and the machine. Only flwr and
numpy are imported here, as a minimal Flower app would.
"""

from __future__ import annotations

import time
import warnings

# Flower's protobuf gencode warning (see app/client_app.py), silenced alike.
warnings.filterwarnings("ignore", "Protobuf gencode version", UserWarning)
# ruff: noqa: E402 - the imports below come after the filter on purpose

from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

# The line the benchmark reads: one per round, from the ServerApp's own clock.
ROUND_LINE = "floor: round {round} elapsed {elapsed:.3f}s"

client = ClientApp()
server = ServerApp()


def _metrics(context: Context) -> MetricRecord:
    return MetricRecord({"num-examples": int(context.run_config["num-examples"])})


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Send the received arrays back with a fixed ``num-examples``."""
    content = RecordDict(
        {"arrays": msg.content["arrays"], "metrics": _metrics(context)}
    )
    return Message(content=content, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Reply with a fixed ``num-examples`` only."""
    return Message(content=RecordDict({"metrics": _metrics(context)}), reply_to=msg)


def array_sizes(text: str) -> list[int]:
    """Parse ``array-sizes`` ("60,2": element counts of the model's arrays)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"array-sizes must be comma-separated integers, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"array-sizes must be positive integers, got {text!r}")
    return sizes


@server.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg over every node for ``num-server-rounds`` rounds, each timed."""
    sizes = array_sizes(str(context.run_config["array-sizes"]))
    arrays = ArrayRecord([np.zeros(n, dtype=np.float32) for n in sizes])
    start = time.monotonic()

    def clock(server_round: int, _arrays: ArrayRecord) -> None:
        elapsed = time.monotonic() - start
        log(INFO, ROUND_LINE.format(round=server_round, elapsed=elapsed))

    FedAvg().start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=int(context.run_config["num-server-rounds"]),
        evaluate_fn=clock,
    )
