"""Server side of SecAgg+ on the Message API.

The server relays keys and ciphertexts, sums masked vectors and removes the masks,
and learns only the sum of the updates.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017, https://eprint.iacr.org/2017/281; Bell et al., "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020,
https://eprint.iacr.org/2020/704. Stages follow Flower's legacy
``SecAggPlusWorkflow``; crypto primitives are Flower's public SecAgg+ ones.
Threat model: honest-but-curious server (see docs/secure-aggregation.md).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    generate_shared_key,
)
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
)

from app.secagg import protocol as P
from app.secagg.aggregator import SecureSum, StagedExchange
from app.secagg.params import SecAggParams
from app.secagg.vectors import Layout, decode_sum, mask
from strategies.screening import note_problem

log = logging.getLogger(__name__)


class ProtocolAbort(RuntimeError):
    """The round's secure aggregation cannot complete (too few hospitals left)."""


@dataclass
class _RoundState:
    session: str
    layout: Layout
    base: np.ndarray
    num_shares: int
    threshold: int
    sampled: list[int]
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    # holder node id -> node ids whose shares it received (relayed by the server)
    holds: dict[int, set[int]] = field(default_factory=dict)
    # (source, destination) -> encrypted shares, relayed in stage 2
    ciphertexts: dict[tuple[int, int], bytes] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")


def ring_neighbours(node_ids: list[int], num_shares: int) -> dict[int, set[int]]:
    """Map each node to its share holders (itself included) on a random ring.

    Everyone when ``num_shares`` covers the round, else ``num_shares // 2`` on each
    side (SecAgg+).
    """
    order = list(node_ids)
    random.SystemRandom().shuffle(order)
    n = len(order)
    if num_shares >= n:
        return {nid: set(order) for nid in order}
    half = num_shares // 2
    return {
        nid: {order[(i + off) % n] for off in range(-half, half + 1)}
        for i, nid in enumerate(order)
    }


class SecAggPlusAggregator(StagedExchange):
    """SecAgg+ over the Message API, used by ``MedFedAvg``.

    Selected by ``secure-aggregation = true`` (the default mechanism).

    Parameters
    ----------
    params : SecAggParams
        Shares, threshold, clipping and quantization ranges, weighting.
    timeout : float, optional
        Seconds to wait for each stage's replies (the run's ``round-timeout``).
    """

    name = "secagg+"
    record = P.RECORD
    phase_prefix = "secagg"

    def __init__(self, params: SecAggParams, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self.params = params
        self._rounds: dict[int, _RoundState] = {}

    # ----------------------------------------------------------------- stages 0-1
    def open_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        messages: list[Message],
        grid: Grid,
        ledger_entry: dict,
    ) -> list[Message]:
        """Run set-up and key sharing; return the stage-2 train messages."""
        self._rounds.pop(server_round, None)
        sampled = [m.metadata.dst_node_id for m in messages]
        if len(sampled) < 2:
            self._fail(
                ledger_entry,
                server_round,
                f"{len(sampled)} hospital(s) sampled; secure aggregation needs 2",
            )
            return []
        try:
            num_shares, threshold = self.params.for_round(len(sampled))
        except ValueError as err:
            self._fail(ledger_entry, server_round, str(err))
            return []
        layout = Layout.of(arrays)
        state = _RoundState(
            session=secrets.token_hex(8),
            layout=layout,
            base=layout.flatten(arrays),
            num_shares=num_shares,
            threshold=threshold,
            sampled=sampled,
        )
        state.report = {
            "protocol": self.name,
            "sampled": len(sampled),
            "num_shares": num_shares,
            "threshold": threshold,
        }
        self._grid = grid
        try:
            active = self._setup(state, ledger_entry)
            active = self._share_keys(state, active, ledger_entry)
        except ProtocolAbort as err:
            self._fail(ledger_entry, server_round, str(err), state)
            return []
        self._rounds[server_round] = state
        ledger_entry["secure_aggregation"] = state.report
        out = []
        for message in messages:
            nid = message.metadata.dst_node_id
            if nid not in active:
                continue
            srcs = sorted(state.holds[nid] - {nid})
            content = RecordDict(dict(message.content.items()))
            content[P.RECORD] = ConfigRecord(
                {
                    P.SESSION: state.session,
                    P.ROUND: server_round,
                    P.SOURCES: srcs,
                    P.CIPHERTEXTS: [state.ciphertexts[(s, nid)] for s in srcs],
                }
            )
            out.append(
                Message(
                    content=content,
                    message_type=message.metadata.message_type,
                    dst_node_id=nid,
                )
            )
        state.ciphertexts = {}
        log.info(
            "Round %d secure aggregation: %d hospitals share keys (%d shares, "
            "threshold %d)",
            server_round,
            len(out),
            num_shares,
            threshold,
        )
        return out

    def _ask(
        self, state: _RoundState, message_type: str, records: dict[int, ConfigRecord]
    ) -> list[Message]:
        for record in records.values():
            record[P.SESSION] = state.session
        return self._exchange(message_type, records)

    def _answers(
        self, state: _RoundState, replies: list[Message], stage: str, ledger_entry: dict
    ) -> dict[int, ConfigRecord]:
        return self._collect(replies, stage, ledger_entry, names=state.names)

    def _setup(self, state: _RoundState, ledger_entry: dict) -> set[int]:
        config = {
            P.ROUND: 0,
            P.SAMPLE_SIZE: len(state.sampled),
            P.NUM_SHARES: state.num_shares,
            P.THRESHOLD: state.threshold,
            P.CLIPPING_RANGE: float(self.params.clipping_range),
            P.QUANTIZATION_RANGE: int(self.params.quantization_range),
            P.MAX_WEIGHT: float(self.params.max_weight),
            P.WEIGHTING: self.params.weighting,
            P.L2_CLIP: float(self.params.l2_clip),
        }
        replies = self._ask(
            state, P.SETUP, {n: ConfigRecord(dict(config)) for n in state.sampled}
        )
        answers = self._answers(state, replies, "setup", ledger_entry)
        seen: set[bytes] = set()
        for nid, record in answers.items():
            pk1, pk2 = record.get(P.PK1), record.get(P.PK2)
            if (
                not isinstance(pk1, bytes)
                or not isinstance(pk2, bytes)
                or {pk1, pk2} & seen
            ):
                note_problem(
                    ledger_entry,
                    "rejected",
                    state.name(nid),
                    "secagg-setup",
                    "missing or reused public keys",
                )
                continue
            seen |= {pk1, pk2}
            state.public_keys[nid] = (pk1, pk2)
        state.neighbours = ring_neighbours(state.sampled, state.num_shares)
        active = set(state.public_keys)
        self._check(
            state, active, {n: state.neighbours[n] & active for n in active}, "set-up"
        )
        return active

    def _share_keys(
        self, state: _RoundState, active: set[int], ledger_entry: dict
    ) -> set[int]:
        records = {}
        for nid in active:
            ids = sorted(state.neighbours[nid] & active)
            records[nid] = ConfigRecord(
                {
                    P.NEIGHBOURS: ids,
                    P.PK1: [state.public_keys[i][0] for i in ids],
                    P.PK2: [state.public_keys[i][1] for i in ids],
                }
            )
        answers = self._answers(
            state, self._ask(state, P.SHARE_KEYS, records), "share-keys", ledger_entry
        )
        ciphertexts: dict[tuple[int, int], bytes] = {}
        sound: set[int] = set()
        for src, record in answers.items():
            dsts = cast(list[int], record.get(P.DESTINATIONS, []))
            cts = cast(list[bytes], record.get(P.CIPHERTEXTS, []))
            allowed = state.neighbours[src] & active - {src}
            if len(dsts) != len(cts) or set(dsts) != allowed:
                note_problem(
                    ledger_entry,
                    "rejected",
                    state.name(src),
                    "secagg-share-keys",
                    "shares not sent to exactly its neighbours",
                )
                continue
            sound.add(src)
            for dst, ct in zip(dsts, cts, strict=True):
                ciphertexts[(src, dst)] = ct
        active = sound
        state.holds = {
            nid: {nid}
            | {src for (src, dst) in ciphertexts if dst == nid and src in active}
            for nid in active
        }
        state.ciphertexts = ciphertexts
        self._check(state, active, state.holds, "key sharing")
        return active

    def _check(
        self,
        state: _RoundState,
        active: set[int],
        holders: dict[int, set[int]],
        stage: str,
    ) -> None:
        if len(active) < 2:
            raise ProtocolAbort(f"only {len(active)} hospital(s) left after {stage}")
        short = sorted(n for n in active if len(holders[n] & active) < state.threshold)
        if short:
            raise ProtocolAbort(
                f"after {stage}, {len(short)} hospital(s) have fewer than "
                f"{state.threshold} share holders left"
            )

    # ----------------------------------------------------------------- screening
    def reply_problem(self, server_round: int, content: RecordDict) -> str | None:
        """Shape check of a masked reply (its values are uniform noise to us)."""
        state = self._rounds.get(server_round)
        if state is None:
            return "no secure aggregation session for this round"
        if P.MASKED_RECORD not in content.array_records:
            return "no masked update in the reply"
        record = content.array_records[P.MASKED_RECORD]
        if set(record) != {P.MASKED_KEY}:
            return "masked update record has unexpected keys"
        vector = record[P.MASKED_KEY].numpy()
        if vector.dtype != np.uint64 or vector.shape != (state.layout.size + 1,):
            return (
                f"masked update has dtype {vector.dtype} and shape {vector.shape}, "
                f"expected uint64 ({state.layout.size + 1},)"
            )
        return None

    # ----------------------------------------------------------------- stage 3
    def close_round(
        self, server_round: int, replies: Iterable[Message], ledger_entry: dict
    ) -> SecureSum | None:
        """Sum the masked vectors, collect shares, remove the masks."""
        state = self._rounds.pop(server_round, None)
        if state is None:
            return None
        masked = {
            m.metadata.src_node_id: m.content.array_records[P.MASKED_RECORD][
                P.MASKED_KEY
            ].numpy()
            for m in replies
            if m.metadata.src_node_id in state.holds
        }
        try:
            return self._unmask(server_round, state, masked, ledger_entry)
        except ProtocolAbort as err:
            self._fail(ledger_entry, server_round, str(err), state)
            return None

    def _unmask(
        self,
        server_round: int,
        state: _RoundState,
        masked: dict[int, np.ndarray],
        ledger_entry: dict,
    ) -> SecureSum:
        """Unmask the sum of the survivors' masked vectors (SecAgg+ round 4)."""
        survivors = set(masked)
        dropped = set(state.holds) - survivors
        state.report.update(masked=len(survivors), dropped_after_keys=len(dropped))
        if len(survivors) < 2:
            raise ProtocolAbort(f"only {len(survivors)} masked update(s) arrived")
        needed_dead = _recoverable_dead(state, survivors, dropped)
        records = {
            j: ConfigRecord(
                {
                    P.ACTIVE: sorted(state.holds[j] & survivors),
                    P.DEAD: sorted(state.holds[j] & dropped),
                }
            )
            for j in survivors
        }
        answers = self._answers(
            state, self._ask(state, P.UNMASK, records), "unmask", ledger_entry
        )
        state.report["unmask_answers"] = len(answers)
        shares = _collect_shares(answers, records, survivors | needed_dead)
        total = _remove_masks(state, masked, shares)
        weighted, total_weight = decode_sum(
            total,
            len(survivors),
            clipping_range=self.params.clipping_range,
            quantization_range=self.params.quantization_range,
        )
        log.info(
            "Round %d secure aggregation: unmasked the sum of %d updates "
            "(%d hospital(s) dropped after key sharing)",
            server_round,
            len(survivors),
            len(dropped),
        )
        return SecureSum(
            state.layout, state.base, weighted, total_weight, len(survivors)
        )

    def _fail(
        self,
        ledger_entry: dict,
        server_round: int,
        reason: str,
        state: _RoundState | None = None,
    ) -> None:
        log.error("Round %d secure aggregation aborted: %s", server_round, reason)
        ledger_entry["skipped"] = f"secure aggregation: {reason}"
        if state is not None:
            ledger_entry["secure_aggregation"] = state.report


def _recoverable_dead(
    state: _RoundState, survivors: set[int], dropped: set[int]
) -> set[int]:
    """The dropped hospitals whose key must be rebuilt; aborts if a secret can't be.

    Pairwise masks to cancel: survivor j masked with every node whose share it
    holds; for a dropped d, both ends never cancel, so sk1(d) is rebuilt.
    """
    needed_dead = {d for j in survivors for d in state.holds[j] if d in dropped}
    holders_of: dict[int, set[int]] = {n: set() for n in state.holds}
    for holder, owners in state.holds.items():
        for owner in owners:
            holders_of[owner].add(holder)
    for nid in survivors | needed_dead:
        if len(holders_of[nid] & survivors) < state.threshold:
            raise ProtocolAbort(
                f"a {'dropped' if nid in dropped else 'surviving'} hospital's "
                "secret "
                f"has fewer than {state.threshold} surviving share holders"
            )
    return needed_dead


def _collect_shares(
    answers: dict[int, ConfigRecord],
    records: dict[int, ConfigRecord],
    owners: set[int],
) -> dict[int, list[bytes]]:
    """Shares per owner from the unmask answers; an answer naming an owner it was
    not asked about is ignored whole.
    """
    shares: dict[int, list[bytes]] = {n: [] for n in owners}
    for holder, record in answers.items():
        ids = cast(list[int], record.get(P.NODE_IDS, []))
        values = cast(list[bytes], record.get(P.SHARES, []))
        expected = set(records[holder][P.ACTIVE]) | set(records[holder][P.DEAD])  # type: ignore[arg-type]
        if len(ids) != len(values) or not set(ids) <= expected:
            continue
        for owner, share in zip(ids, values, strict=True):
            if owner in shares:
                shares[owner].append(share)
    return shares


def _remove_masks(
    state: _RoundState,
    masked: dict[int, np.ndarray],
    shares: dict[int, list[bytes]],
) -> np.ndarray:
    """Sum the masked vectors and take off every mask the shares rebuild.

    A survivor's share rebuilds its self mask; a dropped hospital's rebuilds its
    key, hence the pairwise masks the survivors left uncancelled.
    """
    survivors = set(masked)
    length = state.layout.size + 1
    total = np.zeros(length, dtype=np.uint64)
    for vector in masked.values():
        total += vector  # uint64 wrap-around is arithmetic mod 2**64
    for nid, owner_shares in shares.items():
        if len(owner_shares) < state.threshold:
            raise ProtocolAbort(
                f"{len(owner_shares)} shares arrived for a secret that needs "
                f"{state.threshold}"
            )
        try:
            secret = combine_shares(owner_shares[: state.threshold])
        except ValueError as err:
            raise ProtocolAbort(f"share reconstruction failed: {err}") from None
        if nid in survivors:
            total -= mask(secret, length)
            continue
        sk1 = bytes_to_private_key(secret)
        for j in survivors:
            if nid not in state.holds[j]:
                continue
            pairwise = mask(
                generate_shared_key(sk1, bytes_to_public_key(state.public_keys[j][0])),
                length,
            )
            if j > nid:
                total -= pairwise  # j added it
            else:
                total += pairwise  # j subtracted it
    return total
