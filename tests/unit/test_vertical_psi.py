"""PSI patient alignment: correct intersections, shared order, no extra leakage."""

from __future__ import annotations

import numpy as np
import pytest

from app.vertical.psi import (
    PsiError,
    PsiPartyState,
    align_in_memory,
    client_intersect,
    client_request,
    handle_psi,
    server_response,
    server_setup,
)


def _ids(numbers, prefix="MRN-"):
    return [f"{prefix}{n:05d}" for n in numbers]


def _shuffled(ids, seed):
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def _check_alignment(id_lists, rows, expected):
    aligned = [
        [ids[r] for r in party_rows]
        for ids, party_rows in zip(id_lists, rows, strict=True)
    ]
    # Every party holds exactly the expected patients, in the same order.
    for party in aligned:
        assert party == aligned[0]
    assert set(aligned[0]) == expected
    assert len(aligned[0]) == len(expected)


def test_single_psi_reveals_positions_of_common_ids():
    server_ids = _ids(range(0, 50))
    client_ids = _shuffled(_ids(range(30, 90)), seed=1)
    setup, server_key = server_setup(server_ids, client_size=len(client_ids))
    request, client_key = client_request(client_ids)
    response = server_response(request, server_key)
    positions = client_intersect(setup, response, client_key)
    assert {client_ids[p] for p in positions} == set(_ids(range(30, 50)))


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ((range(0, 100), range(60, 160)), range(60, 100)),  # partial
        ((range(0, 40), range(40, 80)), range(0)),  # empty
        ((range(0, 40), range(0, 40)), range(0, 40)),  # full
        ((range(0, 10), range(0, 40)), range(0, 10)),  # label holder's set inside
    ],
    ids=["partial", "empty", "full", "subset"],
)
def test_two_party_alignment(ranges, expected):
    id_lists = [_shuffled(_ids(r), seed=i) for i, r in enumerate(ranges)]
    rows, report = align_in_memory(id_lists)
    _check_alignment(id_lists, rows, set(_ids(expected)))
    assert report.intersection_size == len(expected)


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ((range(0, 100), range(50, 150), range(80, 200)), range(80, 100)),
        (
            (range(0, 30), range(0, 30), range(30, 60)),
            range(0),
        ),  # pairs share, all don't
        ((range(0, 30), range(0, 30), range(0, 30)), range(0, 30)),
    ],
    ids=["partial", "empty", "full"],
)
def test_three_party_alignment(ranges, expected):
    id_lists = [_shuffled(_ids(r), seed=10 + i) for i, r in enumerate(ranges)]
    rows, report = align_in_memory(id_lists)
    _check_alignment(id_lists, rows, set(_ids(expected)))
    # The coordinator learns only counts: |L ∩ P1| then |L ∩ P1 ∩ P2|.
    first = len(set(ranges[0]) & set(ranges[1]))
    assert report.chain_counts == [first, len(expected)]


def test_feature_party_keeps_only_the_global_intersection():
    """A party never ends up holding rows outside I (e.g. a pairwise overlap)."""
    label, p1, p2 = _ids(range(0, 50)), _ids(range(20, 70)), _ids(range(40, 90))
    states = [PsiPartyState.fresh(50) for _ in range(3)]
    lists = [label, p1, p2]
    from app.vertical.psi import run_alignment

    def send(requests):
        return [
            handle_psi(a, payload, lists[p], states[p]) for p, a, payload in requests
        ]

    run_alignment(send, 0, [1, 2], {0: 50, 1: 50, 2: 50})
    for ids, state in zip(lists, states, strict=True):
        assert {ids[r] for r in state.candidates} == set(_ids(range(40, 50)))
        assert state.server_key == b"" and state.client_key == b""  # keys not kept


def test_id_spelling_is_normalised_and_duplicates_rejected():
    rows, _ = align_in_memory([[" A1", "B2"], ["A1 ", "C3"]])
    assert [len(r) for r in rows] == [1, 1]
    with pytest.raises(PsiError, match="duplicate"):
        align_in_memory([["A1", "A1"], ["A1"]])


def test_malformed_protocol_bytes_are_a_clear_error():
    state = PsiPartyState.fresh(3)
    handle_psi("psi_setup", {"client-size": 3}, ["a", "b", "c"], state)
    with pytest.raises(PsiError, match="malformed PSI request"):
        handle_psi(
            "psi_response", {"request": b"\xff\x00garbage"}, ["a", "b", "c"], state
        )
    with pytest.raises(PsiError, match="before psi_request"):
        handle_psi(
            "psi_intersect",
            {"setup": b"", "response": b""},
            ["a"],
            PsiPartyState.fresh(1),
        )
