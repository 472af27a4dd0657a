"""Hospital side of SecAgg+: per-stage handlers, state kept in ``context.state``.

The plain update exists only inside this process: the train reply carries the
masked, quantised vector and aggregate metrics, never the model arrays. Checks
the server can no longer make on a masked update (finite values, keys and shapes,
clipping to the fixed-point range, weight bound) are made here before masking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, cast

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    RecordDict,
)
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
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
from app.secagg.vectors import Layout, encode, mask, protect_update, weight_level
from strategies.screening import named_content

log = logging.getLogger(__name__)
SECAGG_ERROR_CODE = 4101


class SecAggError(ValueError):
    """The server's request breaks the protocol; the hospital refuses to answer."""


@dataclass
class HospitalState:
    """One round's protocol state (secret keys included); lives in context.state."""

    session: str = ""
    stage: str = ""
    node_id: int = 0
    num_shares: int = 0
    threshold: int = 0
    clipping_range: float = 0.0
    quantization_range: int = 0
    max_weight: float = 0.0
    weighting: str = "examples"
    l2_clip: float = 0.0
    sk1: bytes = b""
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    seed: bytes = b""
    neighbour_ids: list[int] = field(default_factory=list)
    neighbour_pk1: list[bytes] = field(default_factory=list)
    neighbour_pk2: list[bytes] = field(default_factory=list)
    # shares this hospital holds: owner id -> share of the owner's seed / sk1
    share_owners: list[int] = field(default_factory=list)
    seed_shares: list[bytes] = field(default_factory=list)
    sk1_shares: list[bytes] = field(default_factory=list)

    @classmethod
    def load(cls, context: Context) -> HospitalState:
        record = context.state.config_records.get(P.STATE_RECORD)
        if record is None:
            return cls()
        names = {f.name for f in fields(cls)}
        return cls(
            **{
                k.replace("-", "_"): v
                for k, v in record.items()
                if k.replace("-", "_") in names
            }
        )

    def save(self, context: Context) -> None:
        context.state[P.STATE_RECORD] = ConfigRecord(
            {f.name: getattr(self, f.name) for f in fields(self)}
        )

    def expect(self, record: ConfigRecord, stage: str) -> None:
        """Check that the request continues this session right after ``stage``."""
        if record.get(P.SESSION) != self.session or not self.session:
            raise SecAggError("request for an unknown secure aggregation session")
        if self.stage != stage:
            raise SecAggError(
                f"out-of-order request: at stage '{self.stage}', "
                f"expected the one after '{stage}'"
            )

    def shared_key_with(self, sk: bytes, pk: bytes) -> bytes:
        return generate_shared_key(bytes_to_private_key(sk), bytes_to_public_key(pk))


def _clear(context: Context) -> None:
    if P.STATE_RECORD in context.state.config_records:
        del context.state.config_records[P.STATE_RECORD]


def _answer(msg: Message, context: Context, values: dict[str, Any]) -> Message:
    return Message(
        named_content(
            hospital_name(context.node_config), {P.RECORD: ConfigRecord(values)}
        ),
        reply_to=msg,
    )


def _guarded(handler: Callable[[Message, Context], Message]) -> Callable[..., Message]:
    """Turn a protocol violation into an error reply (and wipe the round's state)."""

    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (SecAggError, ValueError, KeyError, TypeError) as err:
            _clear(context)
            name = hospital_name(context.node_config)
            log.error("Hospital %s refused a secure aggregation step: %s", name, err)
            return Message(
                Error(code=SECAGG_ERROR_CODE, reason=f"secure aggregation: {err}"),
                reply_to=msg,
            )

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


@_guarded
def setup(msg: Message, context: Context) -> Message:
    """Stage 0: take the parameters, create two key pairs, return the public keys."""
    record = msg.content.config_records[P.RECORD]
    if HospitalState.load(context).stage not in ("", P.STAGE_UNMASK):
        log.warning("Secure aggregation restarted before the last session ended.")
    num_shares = int(cast(int, record[P.NUM_SHARES]))
    threshold = int(cast(int, record[P.THRESHOLD]))
    if not 2 <= threshold <= num_shares or 2 * threshold <= num_shares:
        raise SecAggError(
            f"threshold {threshold} is not a majority of {num_shares} shares"
        )
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    state = HospitalState(
        session=str(record[P.SESSION]),
        stage=P.STAGE_SETUP,
        node_id=msg.metadata.dst_node_id,
        num_shares=num_shares,
        threshold=threshold,
        clipping_range=float(cast(float, record[P.CLIPPING_RANGE])),
        quantization_range=int(cast(int, record[P.QUANTIZATION_RANGE])),
        max_weight=float(cast(float, record[P.MAX_WEIGHT])),
        weighting=str(record[P.WEIGHTING]),
        l2_clip=float(cast(float, record[P.L2_CLIP])),
        sk1=private_key_to_bytes(sk1),
        pk1=public_key_to_bytes(pk1),
        sk2=private_key_to_bytes(sk2),
        pk2=public_key_to_bytes(pk2),
    )
    state.save(context)
    return _answer(msg, context, {P.PK1: state.pk1, P.PK2: state.pk2})


@_guarded
def share_keys(msg: Message, context: Context) -> Message:
    """Stage 1: Shamir-share the self-mask seed and sk1 among the neighbours.

    Each neighbour's share pair is encrypted with a key only that neighbour can
    derive (ECDH on pk2); the server relays the ciphertexts.
    """
    record = msg.content.config_records[P.RECORD]
    state = HospitalState.load(context)
    state.expect(record, P.STAGE_SETUP)
    ids = [int(i) for i in cast(list[int], record[P.NEIGHBOURS])]
    pk1s = cast(list[bytes], record[P.PK1])
    pk2s = cast(list[bytes], record[P.PK2])
    if not len(ids) == len(pk1s) == len(pk2s) or len(set(ids)) != len(ids):
        raise SecAggError("malformed neighbour list")
    if not state.threshold <= len(ids) <= state.num_shares:
        raise SecAggError(
            f"{len(ids)} neighbours for {state.num_shares} shares and "
            f"threshold {state.threshold}"
        )
    if len(set(pk1s) | set(pk2s)) != 2 * len(ids):
        raise SecAggError("neighbours' public keys are not all distinct")
    me = state.node_id
    if me not in ids or (pk1s[ids.index(me)], pk2s[ids.index(me)]) != (
        state.pk1,
        state.pk2,
    ):
        raise SecAggError("own public keys missing or altered in the neighbour list")
    state.seed = os.urandom(32)
    seed_shares = create_shares(state.seed, state.threshold, state.num_shares)
    sk1_shares = create_shares(state.sk1, state.threshold, state.num_shares)
    destinations, ciphertexts = [], []
    for idx, (nid, pk2) in enumerate(zip(ids, pk2s, strict=True)):
        if nid == me:
            state.share_owners = [me]
            state.seed_shares, state.sk1_shares = [seed_shares[idx]], [sk1_shares[idx]]
            continue
        plaintext = share_keys_plaintext_concat(
            me, nid, seed_shares[idx], sk1_shares[idx]
        )
        ciphertexts.append(encrypt(state.shared_key_with(state.sk2, pk2), plaintext))
        destinations.append(nid)
    state.neighbour_ids, state.neighbour_pk1, state.neighbour_pk2 = ids, pk1s, pk2s
    state.stage = P.STAGE_SHARE_KEYS
    state.save(context)
    return _answer(
        msg, context, {P.DESTINATIONS: destinations, P.CIPHERTEXTS: ciphertexts}
    )


def _receive_shares(state: HospitalState, record: ConfigRecord) -> list[int]:
    """Decrypt the relayed shares; return the sources (the pairwise-mask partners)."""
    sources = [int(s) for s in cast(list[int], record[P.SOURCES])]
    ciphertexts = cast(list[bytes], record[P.CIPHERTEXTS])
    if len(sources) != len(ciphertexts) or len(set(sources)) != len(sources):
        raise SecAggError("malformed relayed shares")
    if len(sources) + 1 < state.threshold:
        raise SecAggError(
            f"only {len(sources)} neighbours left; threshold is {state.threshold}"
        )
    for src, ct in zip(sources, ciphertexts, strict=True):
        if src == state.node_id or src not in state.neighbour_ids:
            raise SecAggError(f"shares relayed from a non-neighbour ({src})")
        pk2 = state.neighbour_pk2[state.neighbour_ids.index(src)]
        try:
            plain = decrypt(state.shared_key_with(state.sk2, pk2), ct)
        except Exception:  # noqa: BLE001 - any tampering reads as an invalid token
            raise SecAggError(f"shares from {src} failed authentication") from None
        actual_src, dst, seed_share, sk1_share = share_keys_plaintext_separate(plain)
        if actual_src != src or dst != state.node_id:
            raise SecAggError("relayed shares are addressed to someone else")
        state.share_owners.append(src)
        state.seed_shares.append(seed_share)
        state.sk1_shares.append(sk1_share)
    return sources


def masked_train(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Stage 2 (a train message): train, then reply with the masked update only.

    The reply carries ``[weight, w * update] + self mask +/- pairwise masks``.
    """
    guarded = _guarded(lambda m, c: _masked_train(m, c, call_next))
    return guarded(msg, context)


def _masked_train(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    record = msg.content.config_records[P.RECORD]
    state = HospitalState.load(context)
    state.expect(record, P.STAGE_SHARE_KEYS)
    partners = _receive_shares(state, record)  # before training: fail fast
    reply = call_next(msg, context)
    if reply.has_error():
        _clear(context)
        return reply
    global_arrays = msg.content.array_records["arrays"]
    layout = Layout.of(global_arrays)
    local = next(iter(reply.content.array_records.values()))
    try:
        update = layout.flatten(local) - layout.flatten(global_arrays)
    except ValueError as err:
        raise SecAggError(f"local model does not match the global one: {err}") from None
    protected = protect_update(
        update, clipping_range=state.clipping_range, l2_clip=state.l2_clip
    )
    metrics = next(iter(reply.content.metric_records.values()))
    if state.weighting == "unit":
        level = state.quantization_range
    else:
        weight = float(cast(float, metrics["num-examples"]))
        if weight > state.max_weight:
            log.warning(
                "Hospital weight %s capped at secagg-max-weight %s.",
                weight,
                state.max_weight,
            )
        level = weight_level(
            weight,
            max_weight=state.max_weight,
            quantization_range=state.quantization_range,
        )
    vector = encode(
        protected.update,
        level,
        clipping_range=state.clipping_range,
        quantization_range=state.quantization_range,
    )
    vector += mask(state.seed, vector.size)
    for partner in partners:
        pk1 = state.neighbour_pk1[state.neighbour_ids.index(partner)]
        pairwise = mask(state.shared_key_with(state.sk1, pk1), vector.size)
        if state.node_id > partner:
            vector += pairwise
        else:
            vector -= pairwise
    if protected.clipped_fraction > 0:
        log.warning(
            "%.2f%% of the update's coordinates were clipped to +/-%s before "
            "masking (raise secagg-clipping-range?)",
            100 * protected.clipped_fraction,
            state.clipping_range,
        )
    metrics[P.CLIPPED_METRIC] = protected.clipped_fraction
    content = RecordDict(
        {
            P.MASKED_RECORD: ArrayRecord({P.MASKED_KEY: Array(vector)}),
            "metrics": metrics,
        }
    )
    for name, config in reply.content.config_records.items():
        content[name] = config
    state.stage = P.STAGE_MASK
    state.save(context)
    return Message(content, reply_to=msg)


@_guarded
def unmask(msg: Message, context: Context) -> Message:
    """Stage 3: self-mask shares of survivors, sk1 shares of dropped hospitals.

    Never both for one hospital, and only once per session.
    """
    record = msg.content.config_records[P.RECORD]
    state = HospitalState.load(context)
    state.expect(record, P.STAGE_MASK)
    _clear(context)  # one answer per session, whatever happens next
    active = [int(i) for i in cast(list[int], record[P.ACTIVE])]
    dead = [int(i) for i in cast(list[int], record[P.DEAD])]
    if set(active) & set(dead):
        raise SecAggError("a hospital is listed both as survivor and as dropped")
    if state.node_id not in active:
        raise SecAggError("this hospital's update is listed as dropped")
    if len(active) < state.threshold:
        raise SecAggError(
            f"only {len(active)} survivors; threshold is {state.threshold}"
        )
    held = dict(zip(state.share_owners, range(len(state.share_owners)), strict=True))
    unknown = [i for i in active + dead if i not in held]
    if unknown:
        raise SecAggError(f"no shares held for {len(unknown)} listed hospital(s)")
    shares = [state.seed_shares[held[i]] for i in active]
    shares += [state.sk1_shares[held[i]] for i in dead]
    return _answer(msg, context, {P.NODE_IDS: active + dead, P.SHARES: shares})
