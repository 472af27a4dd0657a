"""A bare ClientApp: imports torch, loads the received arrays, returns them."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Return the received model's arrays (through a torch state_dict)."""
    del context
    state = msg.content["arrays"].to_torch_state_dict()
    arrays = ArrayRecord({k: v.clone() for k, v in state.items()})
    metrics = MetricRecord({"num-examples": 1, "norm": float(torch.zeros(1).sum())})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Reply with one metric."""
    del context
    metrics = MetricRecord({"num-examples": 1, "accuracy": 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
