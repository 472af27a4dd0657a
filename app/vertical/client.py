"""ClientApp handlers for vertical FL (``query.vfl_*`` and ``query.psi_*`` messages).

Each handler translates one Message into a :class:`app.vertical.party.PartySession`
call. The party's PSI candidates, models and optimizer buffers live in
``context.state`` between messages and never leave the node. Replies carry
counts, PSI bytes, embeddings, gradients or aggregate metrics only.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict

from app.client.hospital import hospital_name, train_settings
from app.config import RunConfig
from app.logs import route_to_flower
from app.vertical.data import load_party
from app.vertical.party import PartySession, PartyState, VerticalSettings
from app.vertical.psi import PsiError
from data.spec import DataError

log = logging.getLogger(__name__)

PAYLOAD, TENSORS = "vfl", "tensors"
STATE_KEYS = {
    "psi": "vertical-psi",
    "meta": "vertical-meta",
    "model": "vertical-model",
    "optim": "vertical-optim",
}
DATA_ERROR_CODE, PROTOCOL_ERROR_CODE = 4001, 4002


def vertical_settings(cfg: RunConfig) -> VerticalSettings:
    return VerticalSettings(
        embedding=cfg.vertical_embedding,
        hidden=cfg.mlp_hidden,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        # one epoch of the split network per round (for task='vertical' the
        # config refuses local-epochs other than 1, local-steps, label-smoothing)
        train=train_settings(cfg, epochs=1),
    )


def _load_state(context: Context) -> PartyState:
    st = context.state
    state = PartyState()
    if (key := STATE_KEYS["psi"]) in st.config_records:
        state.psi = dict(st.config_records[key])
    if (key := STATE_KEYS["meta"]) in st.config_records:
        state.meta = dict(st.config_records[key])
    if (key := STATE_KEYS["model"]) in st.array_records:
        state.model = st.array_records[key].to_torch_state_dict()
    if (key := STATE_KEYS["optim"]) in st.array_records:
        state.optim = st.array_records[key].to_torch_state_dict()
    return state


def _save_state(context: Context, state: PartyState) -> None:
    if state.psi:
        context.state[STATE_KEYS["psi"]] = ConfigRecord(state.psi)
    if state.meta:
        context.state[STATE_KEYS["meta"]] = ConfigRecord(state.meta)
    if state.model:
        context.state[STATE_KEYS["model"]] = ArrayRecord(state.model)
    context.state[STATE_KEYS["optim"]] = ArrayRecord(state.optim)


def handle_vertical(action: str, msg: Message, context: Context) -> Message:
    """Run one vertical-FL action at this hospital and build the reply."""
    route_to_flower()
    name = hospital_name(context.node_config)
    try:
        cfg = RunConfig.from_run_config(context.run_config)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        party = load_party(
            dataset=cfg.dataset,
            data_path=cfg.data_path,
            id_column=cfg.id_column,
            label_column=cfg.label_column,
            overlap=cfg.vertical_overlap,
            seed=cfg.seed,
            node_config=context.node_config,
        )
        state = _load_state(context)
        session = PartySession(party, vertical_settings(cfg), state)
        payload: dict[str, Any] = dict(msg.content.config_records.get(PAYLOAD, {}))
        tensors = (
            msg.content.array_records[TENSORS].to_torch_state_dict()
            if TENSORS in msg.content.array_records
            else {}
        )
        reply, out = session.handle(action, payload, tensors)
        _save_state(context, session.state)
    except DataError as err:
        log.error("Hospital %s: %s", name, err)  # detail stays in the local log
        return Message(
            Error(code=DATA_ERROR_CODE, reason=f"data error: {err.public_reason}"),
            reply_to=msg,
        )
    except (PsiError, KeyError, ValueError) as err:
        log.error("Hospital %s: vertical %s failed: %s", name, action, err)
        return Message(
            Error(code=PROTOCOL_ERROR_CODE, reason=f"vertical {action} failed"),
            reply_to=msg,
        )
    content = RecordDict({PAYLOAD: ConfigRecord(reply)})
    if out:
        content[TENSORS] = ArrayRecord({k: v.detach().cpu() for k, v in out.items()})
    return Message(content=content, reply_to=msg)
