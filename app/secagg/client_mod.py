"""ClientApp wiring for secure aggregation: query handlers and the train mod."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from app.secagg import protocol as P
from app.secagg import secaggplus_client as secagg_client

Handler = Callable[[Message, Context], Message]
TrainWrapper = Callable[[Message, Context, Handler], Message]

# Record in a train message -> what turns the plain reply into a protected one.
TRAIN_WRAPPERS: dict[str, TrainWrapper] = {P.RECORD: secagg_client.masked_train}
# ``query.<action>`` -> handler.
QUERY_HANDLERS: dict[str, Handler] = dict(secagg_client.QUERY_HANDLERS)

try:  # CKKS needs the optional ``he`` extra (TenSEAL)
    from app.secagg import ckks_client
except ImportError:  # pragma: no cover - exercised only without tenseal
    ckks_client = None  # type: ignore[assignment]
else:
    TRAIN_WRAPPERS[ckks_client.RECORD] = ckks_client.encrypted_train
    QUERY_HANDLERS.update(ckks_client.QUERY_HANDLERS)


def secure_train_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Mask or encrypt the train reply when the message asks for it.

    A Flower mod on ``train``; any other message passes through unchanged.
    """
    for record, wrapper in TRAIN_WRAPPERS.items():
        if record in msg.content.config_records:
            return wrapper(msg, context, call_next)
    return call_next(msg, context)


def register(app: ClientApp) -> None:
    """Register the protocol's ``query.*`` handlers on ``app``."""
    for action, handler in QUERY_HANDLERS.items():
        app.query(action)(handler)
