"""ClientApp wiring for secure aggregation: query handlers and the train mod.

Handlers are named as ``"module:function"`` and imported on first use
(``data.lazy``): the protocol modules import Flower's cryptography and, for CKKS,
TenSEAL, which a run without secure aggregation never needs.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from app.secagg import protocol as P
from data.lazy import deferred, load

Handler = Callable[[Message, Context], Message]

SECAGG_CLIENT = "app.secagg.secaggplus_client"
CKKS_CLIENT = "app.secagg.ckks_client"


def _action(message_type: str) -> str:
    return message_type.split(".", 1)[1]  # "query.<action>" -> "<action>"


# Record in a train message -> what turns the plain reply into a protected one.
TRAIN_WRAPPERS: dict[str, str] = {P.RECORD: f"{SECAGG_CLIENT}:masked_train"}
# ``query.<action>`` -> handler.
QUERY_HANDLERS: dict[str, str] = {
    _action(P.SETUP): f"{SECAGG_CLIENT}:setup",
    _action(P.SHARE_KEYS): f"{SECAGG_CLIENT}:share_keys",
    _action(P.UNMASK): f"{SECAGG_CLIENT}:unmask",
}
if find_spec("tenseal") is not None:  # CKKS needs the optional ``he`` extra
    TRAIN_WRAPPERS[P.CKKS_RECORD] = f"{CKKS_CLIENT}:encrypted_train"
    QUERY_HANDLERS.update(
        {
            _action(P.CKKS_HELLO): f"{CKKS_CLIENT}:hello",
            _action(P.CKKS_DEAL): f"{CKKS_CLIENT}:deal",
            _action(P.CKKS_INSTALL): f"{CKKS_CLIENT}:install",
            _action(P.CKKS_DECRYPT): f"{CKKS_CLIENT}:decrypt_sum",
        }
    )


def secure_train_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Mask or encrypt the train reply when the message asks for it.

    A Flower mod on ``train``; any other message passes through unchanged.
    """
    for record, wrapper in TRAIN_WRAPPERS.items():
        if record in msg.content.config_records:
            return load(wrapper)(msg, context, call_next)
    return call_next(msg, context)


def register(app: ClientApp) -> None:
    """Register the protocol's ``query.*`` handlers on ``app``."""
    for action, target in QUERY_HANDLERS.items():
        app.query(action)(deferred(target))
