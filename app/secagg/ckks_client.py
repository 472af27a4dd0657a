"""Hospital side of CKKS aggregation.

Key exchange, encryption of the protected update, and decryption of the server's
encrypted sum (once per round).

Needs the optional ``he`` extra (TenSEAL). The secret CKKS context lives only in
``context.state``; the server receives a context without keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import tenseal as ts
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    RecordDict,
)
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from app.client.hospital import hospital_name
from app.secagg import protocol as P
from app.secagg.ckks import fingerprint
from app.secagg.vectors import Layout, protect_update
from strategies.screening import named_content

log = logging.getLogger(__name__)
RECORD = P.CKKS_RECORD
CKKS_ERROR_CODE = 4102
# 128-bit security for additions; 4096 slots per ciphertext, ~1e-8 absolute error.
POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = [60, 40, 40, 60]
GLOBAL_SCALE = 2**40


class CKKSError(ValueError):
    """A request the hospital refuses to serve."""


def new_context() -> ts.Context:
    """Create a CKKS context holding a secret key."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=COEFF_MOD_BIT_SIZES,
    )
    context.global_scale = GLOBAL_SCALE
    return context


def server_view(context: ts.Context) -> bytes:
    """Serialise ``context`` without any key: enough to add ciphertexts, no more."""
    return context.serialize(
        save_public_key=False,
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def _state(context: Context) -> ConfigRecord:
    if P.CKKS_STATE not in context.state.config_records:
        context.state[P.CKKS_STATE] = ConfigRecord({})
    return context.state.config_records[P.CKKS_STATE]


def _secret_context(context: Context) -> ts.Context:
    secret = _state(context).get("secret-context")
    if not isinstance(secret, bytes):
        raise CKKSError("this hospital holds no CKKS key")
    return ts.context_from(secret)


def _answer(
    msg: Message,
    context: Context,
    values: dict[str, Any],
    arrays: ArrayRecord | None = None,
) -> Message:
    content = named_content(
        hospital_name(context.node_config), {P.CKKS_RECORD: ConfigRecord(values)}
    )
    if arrays is not None:
        content[P.CKKS_PLAIN_SUM] = arrays
    return Message(content, reply_to=msg)


def _guarded(handler: Callable[[Message, Context], Message]) -> Callable[..., Message]:
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (CKKSError, ValueError, KeyError, TypeError) as err:
            log.error(
                "Hospital %s refused a CKKS step: %s",
                hospital_name(context.node_config),
                err,
            )
            return Message(
                Error(code=CKKS_ERROR_CODE, reason=f"ckks: {err}"), reply_to=msg
            )

    run.__name__, run.__doc__ = handler.__name__, handler.__doc__
    return run


@_guarded
def hello(msg: Message, context: Context) -> Message:
    """Key distribution 1: an ephemeral EC key pair to receive the secret context."""
    sk, pk = generate_key_pairs()
    state = _state(context)
    state["exchange-sk"] = private_key_to_bytes(sk)
    return _answer(msg, context, {P.PK1: public_key_to_bytes(pk)})


@_guarded
def deal(msg: Message, context: Context) -> Message:
    """Key distribution 2: encrypt the secret context for each recipient.

    Creates the context if this hospital has none; encryption is ECDH + Fernet; the
    server gets a key-less copy.
    """
    record = msg.content[P.CKKS_RECORD]
    state = _state(context)
    if not isinstance(state.get("secret-context"), bytes):
        state["secret-context"] = new_context().serialize(
            save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
    secret = cast(bytes, state["secret-context"])
    sk, pk = generate_key_pairs()
    ciphertexts = [
        encrypt(generate_shared_key(sk, bytes_to_public_key(peer)), secret)
        for peer in cast(list[bytes], record[P.PUBLIC_KEYS])
    ]
    return _answer(
        msg,
        context,
        {
            P.DEALER_KEY: public_key_to_bytes(pk),
            P.CIPHERTEXTS: ciphertexts,
            P.SERVER_CONTEXT: server_view(ts.context_from(secret)),
        },
    )


@_guarded
def install(msg: Message, context: Context) -> Message:
    """Key distribution 3: decrypt and keep the secret context; confirm its id."""
    record = msg.content[P.CKKS_RECORD]
    state = _state(context)
    sk = state.get("exchange-sk")
    if not isinstance(sk, bytes):
        raise CKKSError("no key exchange in progress")
    key = generate_shared_key(
        bytes_to_private_key(sk), bytes_to_public_key(cast(bytes, record[P.DEALER_KEY]))
    )
    secret = decrypt(key, cast(bytes, record[P.CIPHERTEXT]))
    ckks = ts.context_from(secret)
    if not ckks.is_private():
        raise CKKSError("the dealt context holds no secret key")
    state["secret-context"] = secret
    del state["exchange-sk"]
    return _answer(msg, context, {P.FINGERPRINT: fingerprint(server_view(ckks))})


def encrypted_train(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Train with ``call_next``; reply with CKKS(``[w, w * update]``) only."""
    return _guarded(lambda m, c: _encrypted_train(m, c, call_next))(msg, context)


def _encrypted_train(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    record = msg.content[P.CKKS_RECORD]
    ckks = _secret_context(context)
    if record.get(P.FINGERPRINT) != fingerprint(server_view(ckks)):
        raise CKKSError("the server's key set differs from this hospital's")
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    global_arrays = msg.content.array_records["arrays"]
    layout = Layout.of(global_arrays)
    local = next(iter(reply.content.array_records.values()))
    update = layout.flatten(local) - layout.flatten(global_arrays)
    protected = protect_update(
        update,
        clipping_range=float(record[P.CLIPPING_RANGE]),
        l2_clip=float(record[P.L2_CLIP]),
    )
    metrics = next(iter(reply.content.metric_records.values()))
    if record[P.WEIGHTING] == "unit":
        weight = 1.0
    else:
        weight = min(float(metrics["num-examples"]), float(record[P.MAX_WEIGHT]))
    vector = np.concatenate([[weight], weight * protected.update])
    ciphertext = ts.ckks_vector(ckks, vector.tolist()).serialize()
    metrics[P.CLIPPED_METRIC] = protected.clipped_fraction
    _state(context)["decrypt-session"] = str(record[P.SESSION])
    content = RecordDict(
        {"metrics": metrics, P.CKKS_RECORD: ConfigRecord({P.CIPHERTEXT: ciphertext})}
    )
    for name, config in reply.content.config_records.items():
        content[name] = config
    return Message(content, reply_to=msg)


@_guarded
def decrypt_sum(msg: Message, context: Context) -> Message:
    """Decrypt the round's encrypted sum, once, for a round this hospital joined."""
    record = msg.content[P.CKKS_RECORD]
    state = _state(context)
    if state.get("decrypt-session") != record.get(P.SESSION):
        raise CKKSError("no decryption pending for this session (one per round)")
    if int(cast(int, record[P.CONTRIBUTORS])) < 2:
        raise CKKSError("refusing to decrypt a sum of fewer than 2 updates")
    del state["decrypt-session"]
    ckks = _secret_context(context)
    total = ts.ckks_vector_from(ckks, cast(bytes, record[P.CIPHERTEXT])).decrypt()
    plain = ArrayRecord({P.CKKS_PLAIN_SUM: Array(np.asarray(total, dtype=np.float64))})
    return _answer(msg, context, {}, plain)
