"""TEST HARNESS ONLY: model-poisoning hospitals for robustness experiments.

With ``poison-fraction > 0`` the simulated hospitals with the lowest partition ids
(``round(poison-fraction * num-partitions)`` of them) send
``w_global - poison-scale * (w_local - w_global)``: their honest update,
sign-flipped and scaled. This lets ``medflower benchmark poisoning`` measure how
robust aggregation copes.

The production ClientApp never imports this module: the in-process harness
(:class:`scripts.harness.inprocess.InProcessGrid`) wraps the ClientApp with
:func:`poisoning_mod` when the run config asks for it. A real ``flwr run`` (or a
deployed SuperNode) with ``poison-fraction > 0`` therefore trains honestly; its
ClientApp logs a warning that the setting is ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType

from app.config import RunConfig

log = logging.getLogger(__name__)

Handler = Callable[[Message, Context], Message]
POISON_KEYS = ("poison-fraction", "poison-scale")


def is_poisoned(poison_fraction: float, node_config: Mapping[str, Any]) -> bool:
    """Whether this simulated hospital plays a poisoner (deterministic, lowest ids)."""
    if poison_fraction <= 0:
        return False
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        log.warning(
            "poison-fraction is set but ignored: this is not a simulated hospital."
        )
        return False
    count = int(round(poison_fraction * int(node_config["num-partitions"])))
    return int(node_config["partition-id"]) < count


def poison_update(
    global_state: Mapping[str, torch.Tensor],
    local_state: Mapping[str, torch.Tensor],
    scale: float,
) -> dict[str, torch.Tensor]:
    """``global - scale * (local - global)`` for floating tensors; others unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, local in local_state.items():
        # the hospital's model held the global values in its own dtype
        base = global_state[key].to(local.dtype)
        if local.is_floating_point():
            out[key] = base - scale * (local.detach().cpu() - base)
        else:
            out[key] = local
    return out


def honest_view(context: Context) -> Context:
    """``context`` without the poisoning keys, for the ClientApp underneath.

    The harness plays the poisoner itself; the ClientApp sees an ordinary run (and
    so does not warn that ``poison-fraction`` is ignored). ``state`` is shared.
    """
    run_config = {k: v for k, v in context.run_config.items() if k not in POISON_KEYS}
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=context.state,
        run_config=run_config,
        series_id=context.series_id,
    )


def poisoning_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """A Flower mod: a poisoner's train reply carries the poisoned model.

    The honest reply is computed first (by ``call_next``), then its arrays are
    replaced by :func:`poison_update` of the received global model. Any other
    message, error reply or honest hospital passes through unchanged.
    """
    reply = call_next(msg, honest_view(context))
    cfg = RunConfig.from_run_config(context.run_config)
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or reply.has_error()
        or "arrays" not in reply.content.array_records
        or not is_poisoned(cfg.poison_fraction, context.node_config)
    ):
        return reply
    global_state = msg.content["arrays"].to_torch_state_dict()
    local_state = reply.content["arrays"].to_torch_state_dict()
    reply.content["arrays"] = ArrayRecord(
        poison_update(global_state, local_state, cfg.poison_scale)
    )
    return reply


def with_poisoning(client_app: Handler, run_config: Mapping[str, Any]) -> Handler:
    """``client_app`` wrapped with :func:`poisoning_mod` if ``run_config`` asks.

    Secure aggregation is refused: it masks the update inside the ClientApp, where
    this harness (outside it) cannot reach the plain model.
    """
    if float(run_config.get("poison-fraction", 0.0)) <= 0:
        return client_app
    if RunConfig.from_run_config(dict(run_config)).secure_aggregation:
        raise ValueError(
            "poison-fraction > 0 cannot be combined with secure-aggregation=true: "
            "the poisoning harness changes the plain update, which the ClientApp "
            "masks before replying."
        )

    def poisoned_app(msg: Message, context: Context) -> Message:
        return poisoning_mod(msg, context, client_app)

    return poisoned_app
