"""Patient alignment by private set intersection (ECDH-PSI, openmined-psi).

Why this design
---------------
In vertical federated learning the hospitals hold different features of the same
patients and must find those shared patients without revealing anyone else. The
PSI here is the commutative-encryption (ECDH) protocol of openmined-psi: a PSI
*server* sends its IDs blinded with its secret key (``setup``), the PSI *client*
sends its IDs blinded with its own key (``request``), the server blinds those again
(``response``), and the client alone learns which of *its* IDs are common. Only
these three opaque byte strings cross the network, relayed by the Flower server;
an ID never appears in any message.

Protocol for one label holder L and other parties P1..Pm (a chain, run by
:func:`run_alignment`, identical for 2 and 3+ parties):

* Phase A (L learns the intersection). L starts with all its patients as
  candidates. For each Pk in turn: Pk is PSI server over all its patients, L is
  PSI client over its current candidates; L keeps the candidates Pk also holds.
  After the last Pk, L's candidates are exactly I = L ∩ P1 ∩ ... ∩ Pm.
* Phase B (each Pk learns I). L is PSI server over I; Pk is PSI client over all
  its patients and keeps the ones in I.
* Order. Every party sorts its rows of I by patient ID. The IDs are equal strings
  at every party, so the orders agree without another message; from then on a
  patient is a position 0..|I|-1 and only positions, embeddings and gradients
  cross the network.

What each party learns (the leakage, stated precisely)
------------------------------------------------------
* L learns I, plus L ∩ P1 ∩ ... ∩ Pk for every prefix k of the chain (with two
  parties that is I itself; with three, L learns L ∩ P1 before P2 narrows it),
  and |Pk| (the size of each setup it receives).
* Pk learns I and the size of L's candidate set when Pk is asked (|L| for P1,
  |L ∩ P1| for P2, ...), from the request size. Pk learns nothing about the IDs
  of L or of other parties outside I.
* The Flower server learns only counts: |L ∩ P1 ∩ ... ∩ Pk| after each step, the
  set sizes implied by message lengths, and |I|. It sees blinded curve points
  that it cannot invert without a party's key (DDH assumption), and positions.
* Keys are fresh per protocol step and live only in ``context.state``.

Honest-but-curious parties are assumed (as in openmined-psi): a party that lies
about its set can learn whether chosen IDs are in the other's set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.vertical.actions import PSI_ACTIONS

try:  # the native module pins protobuf; keep the import error explicit
    import private_set_intersection.python as _psi
except ImportError as err:  # pragma: no cover - dependency declared in pyproject
    raise ImportError(
        "vertical federated learning needs openmined-psi==2.0.6 "
        "(pip install openmined-psi==2.0.6)"
    ) from err

# Exact intersection: the RAW setup has no false positives (GCS / Bloom filters
# would trade a false-positive rate for a smaller setup message).
_FPR = 0.0
_STRUCTURE = _psi.DataStructure.RAW
_REVEAL = True  # the client learns *which* of its IDs are common, not only how many


class PsiError(ValueError):
    """A PSI message or patient-ID list cannot be used."""


def normalise_ids(values: Sequence[Any], source: str = "patient IDs") -> list[str]:
    """Patient IDs as stripped strings; empty or duplicate IDs are errors.

    Every party must spell an ID identically: ``" 17"`` and ``"17"`` are one patient.
    """
    ids = [str(v).strip() for v in values]
    if any(not i for i in ids):
        raise PsiError(f"{source}: an ID is empty.")
    if len(set(ids)) != len(ids):
        raise PsiError(f"{source}: {len(ids) - len(set(ids))} duplicate ID(s).")
    return ids


def server_setup(ids: Sequence[str], *, client_size: int) -> tuple[bytes, bytes]:
    """Blind ``ids`` as PSI server; return the setup message and the server key."""
    server = _psi.server.CreateWithNewKey(_REVEAL)
    setup = server.CreateSetupMessage(
        _FPR, max(int(client_size), 1), list(ids), _STRUCTURE
    )
    return setup.SerializeToString(), bytes(server.GetPrivateKeyBytes())


def server_response(request: bytes, key: bytes) -> bytes:
    """Blind a client's request again with the server key."""
    server = _psi.server.CreateFromKey(key, _REVEAL)
    return server.ProcessRequest(
        _parse(_psi.Request, request, "request")
    ).SerializeToString()


def client_request(ids: Sequence[str]) -> tuple[bytes, bytes]:
    """Blind ``ids`` as PSI client; return the request message and the client key."""
    client = _psi.client.CreateWithNewKey(_REVEAL)
    return client.CreateRequest(list(ids)).SerializeToString(), bytes(
        client.GetPrivateKeyBytes()
    )


def client_intersect(setup: bytes, response: bytes, key: bytes) -> list[int]:
    """Positions (into the client's request list) of the IDs the server also holds."""
    client = _psi.client.CreateFromKey(key, _REVEAL)
    positions = client.GetIntersection(
        _parse(_psi.ServerSetup, setup, "setup"),
        _parse(_psi.Response, response, "response"),
    )
    return sorted(int(p) for p in positions)


def _parse(cls: Any, payload: bytes, what: str) -> Any:
    message = cls()
    try:
        message.ParseFromString(bytes(payload))
    except Exception as err:  # protobuf raises DecodeError and others
        raise PsiError(f"malformed PSI {what} message ({err}).") from err
    return message


# --- One party's side: state that lives in the party's context.state --------------


@dataclass
class PsiPartyState:
    """A party's PSI state between messages: its candidate rows and pending keys.

    ``candidates`` are row positions into the party's own table (never IDs); they
    start as every row and only ever shrink.
    """

    candidates: list[int]
    server_key: bytes = b""
    client_key: bytes = b""

    @classmethod
    def fresh(cls, num_rows: int) -> PsiPartyState:
        return cls(candidates=list(range(num_rows)))

    def to_config(self) -> dict[str, Any]:
        return {
            "candidates": list(self.candidates),
            "server-key": self.server_key,
            "client-key": self.client_key,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PsiPartyState:
        return cls(
            candidates=[int(c) for c in config.get("candidates", [])],
            server_key=bytes(config.get("server-key", b"")),
            client_key=bytes(config.get("client-key", b"")),
        )


def handle_psi(
    action: str, payload: Mapping[str, Any], ids: Sequence[str], state: PsiPartyState
) -> dict[str, Any]:
    """Run one PSI step at a party; update ``state`` in place; return the reply.

    The reply holds only protocol bytes and counts.
    """
    mine = [ids[r] for r in state.candidates]
    if action == "psi_setup":
        setup, state.server_key = server_setup(
            mine, client_size=int(payload["client-size"])
        )
        return {"setup": setup, "count": len(mine)}
    if action == "psi_request":
        request, state.client_key = client_request(mine)
        return {"request": request}
    if action == "psi_response":
        if not state.server_key:
            raise PsiError("psi_response before psi_setup: no server key in state.")
        response = server_response(payload["request"], state.server_key)
        state.server_key = b""  # one key per protocol run
        return {"response": response}
    if action == "psi_intersect":
        if not state.client_key:
            raise PsiError("psi_intersect before psi_request: no client key in state.")
        positions = client_intersect(
            payload["setup"], payload["response"], state.client_key
        )
        state.candidates = [state.candidates[p] for p in positions]
        state.client_key = b""
        return {"count": len(state.candidates)}
    raise PsiError(f"unknown PSI action {action!r}; known: {', '.join(PSI_ACTIONS)}.")


def aligned_rows(ids: Sequence[str], candidates: Sequence[int]) -> np.ndarray:
    """The party's rows of the intersection in the shared order (sorted by ID)."""
    return np.asarray(sorted(candidates, key=lambda r: ids[r]), dtype=np.int64)


# --- The Flower server's side: relays bytes, sees counts ---------------------------

Request = tuple[int, str, dict[str, Any]]
Send = Callable[[list[Request]], list[dict[str, Any]]]


@dataclass
class AlignmentReport:
    """What the orchestrator saw: counts, bytes relayed, rounds and time taken."""

    intersection_size: int = 0
    chain_counts: list[int] = field(default_factory=list)
    bytes_relayed: int = 0
    seconds: float = 0.0
    messages: int = 0
    rounds: int = 0
    # in-process runs only: CPU seconds per party, and the sum over rounds of the
    # slowest party's CPU time (the wall time with one core per hospital)
    cpu_seconds: list[float] = field(default_factory=list)
    critical_path_cpu_seconds: float = 0.0


def run_alignment(
    send: Send, label_party: int, other_parties: Sequence[int], sizes: Mapping[int, int]
) -> AlignmentReport:
    """Drive the chained PSI between ``label_party`` and each other party.

    ``send(requests)`` delivers PSI steps ``(party, action, payload)`` to distinct
    parties, which may compute them in parallel, and returns their replies in
    order; ``sizes`` are the parties' record counts (counts only). Each PSI takes
    three rounds: setup and request (independent, in parallel), response, intersect.
    """
    report = AlignmentReport()
    start = time.perf_counter()

    def relay(requests: list[Request]) -> list[dict[str, Any]]:
        replies = send(requests)
        for (_, _, payload), reply in zip(requests, replies, strict=True):
            for record in (payload, reply):
                report.bytes_relayed += sum(
                    len(v) for v in record.values() if isinstance(v, bytes)
                )
        report.messages += len(requests)
        report.rounds += 1
        return replies

    def one_psi(server: int, client: int, client_size: int) -> int:
        setup, request = relay(
            [
                (server, "psi_setup", {"client-size": client_size}),
                (client, "psi_request", {}),
            ]
        )
        (response,) = relay([(server, "psi_response", {"request": request["request"]})])
        (result,) = relay(
            [
                (
                    client,
                    "psi_intersect",
                    {"setup": setup["setup"], "response": response["response"]},
                )
            ]
        )
        return int(result["count"])

    count = int(sizes[label_party])
    for party in other_parties:  # phase A: the label holder narrows its candidates
        count = one_psi(party, label_party, count)
        report.chain_counts.append(count)
    for party in other_parties:  # phase B: each party learns the intersection
        got = one_psi(label_party, party, int(sizes[party]))
        if got != count:
            raise PsiError(
                f"party {party} found {got} shared patients but the label holder "
                f"{count}: the parties' ID spellings differ."
            )
    report.intersection_size = count
    report.seconds = time.perf_counter() - start
    return report


def align_in_memory(
    id_lists: Sequence[Sequence[str]], label_party: int = 0
) -> tuple[list[np.ndarray], AlignmentReport]:
    """Run the full protocol between in-process parties (tests, benchmarks).

    Returns each party's aligned rows (same patient at the same position) and the
    orchestrator's report, with each party's CPU time.
    """
    ids = [normalise_ids(v, f"party {i}") for i, v in enumerate(id_lists)]
    states = [PsiPartyState.fresh(len(v)) for v in ids]

    def send(requests: list[Request]) -> list[dict[str, Any]]:
        replies = []
        for party, action, payload in requests:
            cpu = time.process_time()
            replies.append(handle_psi(action, payload, ids[party], states[party]))
            cpu_seconds[party] += time.process_time() - cpu
            round_cpu.append(time.process_time() - cpu)
        critical_path.append(max(round_cpu))  # parties work in parallel in a round
        round_cpu.clear()
        return replies

    cpu_seconds = [0.0] * len(ids)
    round_cpu: list[float] = []
    critical_path: list[float] = []

    others = [i for i in range(len(ids)) if i != label_party]
    report = run_alignment(
        send, label_party, others, {i: len(v) for i, v in enumerate(ids)}
    )
    report.cpu_seconds = cpu_seconds
    report.critical_path_cpu_seconds = sum(critical_path)
    return [aligned_rows(ids[i], states[i].candidates) for i in range(len(ids))], report
