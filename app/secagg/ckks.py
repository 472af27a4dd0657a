"""Server side of CKKS homomorphic aggregation (TenSEAL).

The server adds encrypted updates with a context that holds no key, and a hospital
decrypts only the sum.

Cheon, Kim, Kim, Song, "Homomorphic Encryption for Arithmetic of Approximate
Numbers", ASIACRYPT 2017; TenSEAL, https://github.com/OpenMined/TenSEAL.
Trust: every hospital holds the same secret key, the server must not collude with
any hospital, and it must relay keys faithfully (docs/secure-aggregation.md).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import tenseal as ts
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from app.secagg import protocol as P
from app.secagg.aggregator import SecureSum, StagedExchange
from app.secagg.params import SecAggParams
from app.secagg.vectors import Layout
from strategies.fedavg import hospital_of
from strategies.screening import note_problem

log = logging.getLogger(__name__)


def fingerprint(server_context: bytes) -> str:
    """Identify one CKKS key set (hash of its key-less serialisation)."""
    return hashlib.sha256(server_context).hexdigest()[:16]


@dataclass
class _Round:
    session: str
    layout: Layout
    base: np.ndarray
    members: set[int]


class CKKSAggregator(StagedExchange):
    """CKKS secure aggregation, used by ``MedFedAvg``.

    Selected by ``secure-aggregation = true`` and ``aggregation-encryption = "ckks"``.

    Parameters
    ----------
    params : SecAggParams
        ``max_weight``, ``weighting``, ``clipping_range`` (a per-coordinate bound the
        hospitals apply) and ``l2_clip`` are used; no quantization is needed.
    timeout : float, optional
        Seconds to wait for each exchange's replies.
    """

    name = "ckks"
    record = P.CKKS_RECORD
    phase_prefix = "ckks"

    def __init__(self, params: SecAggParams, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self.params = params
        self.context_bytes: bytes = b""  # key-less: cannot encrypt or decrypt
        self.holders: set[int] = set()
        self._rounds: dict[int, _Round] = {}

    def _distribute_keys(self, nodes: list[int], ledger_entry: dict) -> set[int]:
        """Give the secret context to ``nodes`` lacking it; return who holds it."""
        newcomers = [n for n in nodes if n not in self.holders]
        if not newcomers:
            return set(nodes)
        hello = self._collect(
            self._exchange(P.CKKS_HELLO, {n: ConfigRecord({}) for n in newcomers}),
            "hello",
            ledger_entry,
        )
        assert self._grid is not None
        online = set(self._grid.get_node_ids())
        # an existing holder deals the existing key; only the first deal creates one
        dealers = sorted(self.holders & online) or (
            [] if self.context_bytes else sorted(hello)[:1]
        )
        for dealer in dealers:
            recipients = sorted(n for n in hello if n != dealer)
            dealt = self._collect(
                self._exchange(
                    P.CKKS_DEAL,
                    {
                        dealer: ConfigRecord(
                            {
                                P.RECIPIENTS: recipients,
                                P.PUBLIC_KEYS: [
                                    cast(bytes, hello[n][P.PK1]) for n in recipients
                                ],
                            }
                        )
                    },
                ),
                "deal",
                ledger_entry,
            ).get(dealer)
            if dealt is None:
                continue
            context = cast(bytes, dealt[P.SERVER_CONTEXT])
            if self.context_bytes and context != self.context_bytes:
                log.error("CKKS dealer returned a different key set; ignored.")
                continue
            self.context_bytes = context
            self.holders.add(dealer)
            installs = {
                n: ConfigRecord({P.DEALER_KEY: dealt[P.DEALER_KEY], P.CIPHERTEXT: ct})
                for n, ct in zip(
                    recipients, cast(list[bytes], dealt[P.CIPHERTEXTS]), strict=True
                )
            }
            if installs:
                done = self._collect(
                    self._exchange(P.CKKS_INSTALL, installs), "install", ledger_entry
                )
                expected = fingerprint(self.context_bytes)
                self.holders |= {
                    n for n, r in done.items() if r.get(P.FINGERPRINT) == expected
                }
            break
        return self.holders & set(nodes)

    def open_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        messages: list[Message],
        grid: Grid,
        ledger_entry: dict,
    ) -> list[Message]:
        """Make sure the sampled hospitals hold the key; return the train messages."""
        self._grid = grid
        nodes = [m.metadata.dst_node_id for m in messages]
        members = self._distribute_keys(nodes, ledger_entry)
        if len(members) < 2:
            ledger_entry["skipped"] = (
                f"CKKS: only {len(members)} hospital(s) hold the "
                "key; secure aggregation needs 2"
            )
            log.error("Round %d: %s", server_round, ledger_entry["skipped"])
            return []
        layout = Layout.of(arrays)
        state = _Round(secrets.token_hex(8), layout, layout.flatten(arrays), members)
        self._rounds[server_round] = state
        ledger_entry["secure_aggregation"] = {
            "protocol": self.name,
            "sampled": len(nodes),
            "key_holders": len(members),
        }
        record = {
            P.SESSION: state.session,
            P.ROUND: server_round,
            P.MAX_WEIGHT: float(self.params.max_weight),
            P.WEIGHTING: self.params.weighting,
            P.CLIPPING_RANGE: float(self.params.clipping_range),
            P.L2_CLIP: float(self.params.l2_clip),
            P.FINGERPRINT: fingerprint(self.context_bytes),
        }
        out = []
        for message in messages:
            nid = message.metadata.dst_node_id
            if nid in members:
                content = RecordDict(dict(message.content.items()))
                content[P.CKKS_RECORD] = ConfigRecord(dict(record))
                out.append(
                    Message(
                        content=content,
                        message_type=message.metadata.message_type,
                        dst_node_id=nid,
                    )
                )
        return out

    def _decrypt(
        self,
        holder: int,
        state: _Round,
        ciphertext: bytes,
        count: int,
        ledger_entry: dict,
    ) -> np.ndarray | None:
        replies = self._exchange(
            P.CKKS_DECRYPT,
            {
                holder: ConfigRecord(
                    {
                        P.SESSION: state.session,
                        P.CONTRIBUTORS: count,
                        P.CIPHERTEXT: ciphertext,
                    }
                )
            },
        )
        for msg in replies:
            if msg.has_error():
                note_problem(
                    ledger_entry,
                    "errors",
                    hospital_of(msg),
                    "ckks-decrypt",
                    msg.error.reason,
                )
                continue
            record = msg.content.array_records.get(P.CKKS_PLAIN_SUM)
            if record is None or P.CKKS_PLAIN_SUM not in record:
                continue
            plain = record[P.CKKS_PLAIN_SUM].numpy().astype(np.float64)
            if plain.shape == (state.layout.size + 1,) and np.isfinite(plain).all():
                return plain
        return None

    def reply_problem(self, server_round: int, content: RecordDict) -> str | None:
        if server_round not in self._rounds:
            return "no CKKS session for this round"
        record = content.config_records.get(P.CKKS_RECORD)
        if record is None or not isinstance(record.get(P.CIPHERTEXT), bytes):
            return "no CKKS ciphertext in the reply"
        if content.array_records:
            return "a CKKS reply must not carry plain arrays"
        return None

    def close_round(
        self, server_round: int, replies: Iterable[Message], ledger_entry: dict
    ) -> SecureSum | None:
        """Add the ciphertexts; ask one key holder to decrypt the sum only."""
        state = self._rounds.pop(server_round, None)
        if state is None:
            return None
        server_context = ts.context_from(self.context_bytes)
        total: Any = None
        contributors = []
        for msg in replies:
            try:
                vector = ts.ckks_vector_from(
                    server_context,
                    cast(bytes, msg.content[P.CKKS_RECORD][P.CIPHERTEXT]),
                )
            except Exception as err:  # noqa: BLE001 - malformed ciphertext
                note_problem(
                    ledger_entry,
                    "rejected",
                    hospital_of(msg),
                    "ckks-sum",
                    f"unreadable ciphertext: {err}",
                )
                continue
            if vector.size() != state.layout.size + 1:
                note_problem(
                    ledger_entry,
                    "rejected",
                    hospital_of(msg),
                    "ckks-sum",
                    "ciphertext of the wrong length",
                )
                continue
            total = vector if total is None else total + vector
            contributors.append(msg.metadata.src_node_id)
        report = ledger_entry.setdefault("secure_aggregation", {})
        report["encrypted"] = len(contributors)
        if len(contributors) < 2:
            ledger_entry["skipped"] = f"CKKS: {len(contributors)} encrypted update(s)"
            return None
        ciphertext = total.serialize()
        for holder in sorted(set(contributors) & self.holders):
            plain = self._decrypt(
                holder, state, ciphertext, len(contributors), ledger_entry
            )
            if plain is None:
                continue  # that holder is gone or answered nonsense: ask the next
            report["decrypted_by"] = f"node-{holder}"
            return SecureSum(
                state.layout, state.base, plain[1:], float(plain[0]), len(contributors)
            )
        ledger_entry["skipped"] = "CKKS: no key holder decrypted the sum"
        return None
