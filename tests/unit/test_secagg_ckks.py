"""CKKS aggregation (TenSEAL): the server adds ciphertexts with a key-less context
and one hospital decrypts only the sum."""

from __future__ import annotations

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from flwr.app import Message  # noqa: E402
from support.secagg import one_round, plain_updates, run_config, weights_of  # noqa: E402

from app.secagg import ckks_client  # noqa: E402
from app.secagg import protocol as P  # noqa: E402
from app.secagg.ckks import CKKSAggregator  # noqa: E402
from app.secagg.params import SecAggParams  # noqa: E402


class RecordingCKKS(CKKSAggregator):
    """Keeps what close_round revealed, to compare it with the plain sum."""

    def close_round(self, server_round, replies, ledger_entry):
        self.revealed = super().close_round(server_round, replies, ledger_entry)
        return self.revealed


def _plain_weighted_sum(plain_grid, params):
    locals_, weights = plain_updates(plain_grid), weights_of(plain_grid)
    base = {
        k: v.numpy().astype(np.float64)
        for k, v in plain_grid.delivered[0].content["arrays"].items()
    }
    total, weight = 0.0, 0.0
    for node, arrays in locals_.items():
        w = min(weights[node], params.max_weight)
        update = np.concatenate(
            [
                arrays[k].astype(np.float64).ravel() - base[k].ravel()
                for k in sorted(base)
            ]
        )
        total = total + w * np.clip(
            update, -params.clipping_range, params.clipping_range
        )
        weight += w
    return total, weight


def test_ckks_sum_equals_plain_sum(tmp_path, task_identity):
    config = run_config(tmp_path)
    params = SecAggParams()
    _, plain_grid, _ = one_round(config, 4)
    aggregator = RecordingCKKS(params)
    arrays, grid, strategy = one_round(config, 4, aggregator)
    expected, weight = _plain_weighted_sum(plain_grid, params)
    got = aggregator.revealed
    assert got is not None and got.count == 4
    rel = np.linalg.norm(got.weighted_sum - expected) / np.linalg.norm(expected)
    assert rel <= 1e-6, rel
    assert got.total_weight == pytest.approx(weight, rel=1e-6)
    assert strategy.ledger.rounds[1]["secure_aggregation"]["encrypted"] == 4
    assert len(arrays) > 0


def test_server_holds_no_key_and_sees_no_plain_update(tmp_path, task_identity):
    config = run_config(tmp_path)
    _, plain_grid, _ = one_round(config, 3)
    aggregator = CKKSAggregator(SecAggParams())
    _, grid, _ = one_round(config, 3, aggregator)
    server_context = ts.context_from(aggregator.context_bytes)
    assert not server_context.is_private() and not server_context.has_public_key()
    secrets = [
        grid.contexts[n].state[P.CKKS_STATE]["secret-context"] for n in grid.node_ids
    ]
    assert len(set(secrets)) == 1  # every hospital holds the same key
    assert ts.context_from(secrets[0]).is_private()
    plain = [
        v.astype(np.float32).tobytes()
        for arrays in plain_updates(plain_grid).values()
        for v in arrays.values()
        if v.size >= 4
    ]
    for wire in grid.wire_up:
        assert secrets[0] not in wire
        assert not any(p in wire for p in plain)
    train = [m for m in grid.replies if m.metadata.message_type == "train"]
    assert train and all(not m.content.array_records for m in train)


def test_next_key_holder_decrypts_when_the_first_is_gone(tmp_path, task_identity):
    def on_deliver(nid: int, msg: Message) -> None:
        if nid == 101 and msg.metadata.message_type == P.CKKS_DECRYPT:
            raise ConnectionError("gone")

    aggregator = RecordingCKKS(SecAggParams())
    arrays, grid, strategy = one_round(
        run_config(tmp_path), 3, aggregator, on_deliver=on_deliver
    )
    report = strategy.ledger.rounds[1]["secure_aggregation"]
    assert report["decrypted_by"] == "node-102"
    assert aggregator.revealed is not None and len(arrays) > 0


def test_a_hospital_decrypts_once_per_round(tmp_path, task_identity):
    aggregator = CKKSAggregator(SecAggParams())
    _, grid, _ = one_round(run_config(tmp_path), 2, aggregator)
    context = grid.contexts[101]  # it decrypted round 1's sum already
    secret = ts.context_from(context.state[P.CKKS_STATE]["secret-context"])
    lone = ts.ckks_vector(secret, [1.0, 2.0]).serialize()
    from flwr.app import ConfigRecord, RecordDict

    request = Message(
        RecordDict(
            {
                P.CKKS_RECORD: ConfigRecord(
                    {P.SESSION: "any", P.CONTRIBUTORS: 2, P.CIPHERTEXT: lone}
                )
            }
        ),
        message_type=P.CKKS_DECRYPT,
        dst_node_id=101,
    )
    reply = ckks_client.decrypt_sum(request, context)
    assert reply.has_error() and "one per round" in reply.error.reason
