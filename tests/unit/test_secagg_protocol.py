"""SecAgg+ on the Message API: equals FedAvg within the quantization error, the
server never receives a plain update, dropouts are survived, hospitals refuse
requests that would reveal an individual update."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from support.secagg import (
    fedavg,
    max_diff,
    one_round,
    plain_updates,
    run_config,
    weights_of,
)

from app.secagg import protocol as P
from app.secagg import secaggplus_client as secagg_client
from app.secagg.params import SecAggParams
from app.secagg.secaggplus import SecAggPlusAggregator, ring_neighbours
from app.secagg.vectors import (
    decode_sum,
    encode,
    mask,
    protect_update,
    weight_level,
)


def tolerance(
    params: SecAggParams, weights: list[float], updates: list[np.ndarray]
) -> float:
    """Worst-case error of the secure mean against exact FedAvg: stochastic rounding
    (one step per hospital) over the summed weight ratios, plus the weights'
    fixed-point rounding, plus float32 storage of the model."""
    T, c, W = params.quantization_range, params.clipping_range, params.max_weight
    levels = [weight_level(w, max_weight=W, quantization_range=T) for w in weights]
    step = 2 * c / T
    rounding = len(weights) * step / (sum(levels) / T)
    biggest = max(float(np.max(np.abs(u))) for u in updates)
    weight_error = 2 * biggest * max(0.5 / lv for lv in levels)
    return rounding + weight_error + 1e-6


# ---------------------------------------------------------------- unit level
def test_masks_are_deterministic_uniform_and_seed_specific():
    a, b = mask(b"seed-1", 10_000), mask(b"seed-1", 10_000)
    assert np.array_equal(a, b) and a.dtype == np.uint64
    assert not np.array_equal(a, mask(b"seed-2", 10_000))
    # top bit set about half the time: the full 64-bit range is used
    assert 0.45 < float(np.mean(a >> np.uint64(63))) < 0.55


def test_encoded_sum_decodes_to_weighted_sum_within_one_step_per_hospital():
    rng = np.random.default_rng(0)
    T, c = 2**20, 1.0
    updates = [rng.uniform(-0.9, 0.9, size=500) for _ in range(3)]
    levels = [
        weight_level(w, max_weight=1000, quantization_range=T) for w in (100, 250, 40)
    ]
    total = np.zeros(501, dtype=np.uint64)
    for u, lv in zip(updates, levels, strict=True):
        total += encode(u, lv, clipping_range=c, quantization_range=T)
    weighted, weight = decode_sum(total, 3, clipping_range=c, quantization_range=T)
    ratios = [lv / T for lv in levels]
    exact = sum(r * u for r, u in zip(ratios, updates, strict=True))
    assert weight == pytest.approx(sum(ratios))
    assert np.max(np.abs(weighted - exact)) <= 3 * 2 * c / T
    assert np.max(np.abs(weighted - exact)) > 0  # it is quantized, not copied


def test_hospital_side_protections():
    with pytest.raises(ValueError, match="NaN"):
        protect_update(np.array([0.1, np.nan]), clipping_range=1.0)
    out = protect_update(np.array([0.5, -3.0, 2.0, 0.0]), clipping_range=1.0)
    assert out.update.tolist() == [0.5, -1.0, 1.0, 0.0] and out.clipped_fraction == 0.5
    scaled = protect_update(np.array([3.0, 4.0]), clipping_range=10.0, l2_clip=1.0)
    assert np.linalg.norm(scaled.update) == pytest.approx(1.0) and scaled.l2_norm == 5.0


def test_ring_neighbours_are_symmetric_and_sized():
    ids = list(range(100, 115))
    graph = ring_neighbours(ids, 5)
    for nid, neighbours in graph.items():
        assert nid in neighbours and len(neighbours) == 5
        assert all(nid in graph[other] for other in neighbours)
    assert all(len(v) == 4 for v in ring_neighbours(ids[:4], 9).values())


# ---------------------------------------------------------------- one real round
@pytest.mark.parametrize(
    "quantization_range,max_weight", [(2**30, 100_000.0), (2**16, 1_000.0)]
)
def test_secure_round_equals_plain_fedavg_within_quantization_error(
    tmp_path, task_identity, quantization_range, max_weight
):
    config = run_config(tmp_path)
    plain, plain_grid, _ = one_round(config, 4)
    params = SecAggParams(quantization_range=quantization_range, max_weight=max_weight)
    secure, grid, strategy = one_round(config, 4, SecAggPlusAggregator(params))

    locals_ = plain_updates(plain_grid)
    weights = weights_of(plain_grid)
    nodes = sorted(locals_)
    expected = fedavg(locals_, weights, nodes)
    # same data, seeds and global model: the plain FedAvg of the same hospitals
    assert max_diff(plain, expected) < 1e-6
    base = {
        k: v.numpy().astype(np.float64)
        for k, v in plain_grid.delivered[0].content["arrays"].items()
    }
    deltas = [
        np.concatenate([locals_[n][k].ravel() - base[k].ravel() for k in sorted(base)])
        for n in nodes
    ]
    tol = tolerance(params, [weights[n] for n in nodes], deltas)
    diff = max_diff(secure, expected)
    assert diff <= tol, (diff, tol)
    if quantization_range == 2**16:
        assert diff > 1e-7  # coarse quantization is visible, so the check can fail
    entry = strategy.ledger.rounds[1]
    assert entry["secure_aggregation"]["masked"] == 4
    assert set(entry["train"]) == {f"hospital-{i}" for i in range(4)}


def test_server_never_receives_a_plain_update(tmp_path, task_identity):
    config = run_config(tmp_path)
    _, plain_grid, _ = one_round(config, 3)
    _, grid, _ = one_round(config, 3, SecAggPlusAggregator(SecAggParams()))
    locals_ = plain_updates(plain_grid)
    base = {k: v.numpy() for k, v in plain_grid.delivered[0].content["arrays"].items()}
    train_replies = [m for m in grid.replies if m.metadata.message_type == "train"]
    assert len(train_replies) == 3
    for msg in train_replies:
        # nothing but the masked vector as arrays; the metrics are plain aggregates
        assert list(msg.content.array_records) == [P.MASKED_RECORD]
    for wire in grid.wire_up:  # every reply of every stage, as serialised bytes
        for arrays in locals_.values():
            for key, value in arrays.items():
                if value.size >= 4:
                    assert value.astype(np.float32).tobytes() not in wire, key
                    delta = (value.astype(np.float64) - base[key]).tobytes()
                    assert delta not in wire, key


# ---------------------------------------------------------------- dropouts
def _drop(node_id: int, message_type: str):
    def on_deliver(nid: int, msg: Message) -> None:
        if nid == node_id and msg.metadata.message_type == message_type:
            raise ConnectionError("hospital went offline")

    return on_deliver


def test_dropout_after_key_sharing_completes_the_round(tmp_path, task_identity):
    config = run_config(tmp_path)
    _, plain_grid, _ = one_round(config, 5)
    dropped = 103  # hospital-2 vanishes when asked to train (stage 2)
    params = SecAggParams()
    secure, grid, strategy = one_round(
        config, 5, SecAggPlusAggregator(params), on_deliver=_drop(dropped, "train")
    )
    entry = strategy.ledger.rounds[1]
    assert "skipped" not in entry
    assert entry["secure_aggregation"]["dropped_after_keys"] == 1
    assert entry["errors"]["node-103"]["phase"] == "train"  # no name: it never answered
    locals_, weights = plain_updates(plain_grid), weights_of(plain_grid)
    survivors = sorted(n for n in locals_ if n != dropped)
    expected = fedavg(locals_, weights, survivors)
    base = {
        k: v.numpy().astype(np.float64)
        for k, v in plain_grid.delivered[0].content["arrays"].items()
    }
    deltas = [
        np.concatenate([locals_[n][k].ravel() - base[k].ravel() for k in sorted(base)])
        for n in survivors
    ]
    assert max_diff(secure, expected) <= tolerance(
        params, [weights[n] for n in survivors], deltas
    )
    # the dropped hospital's key was rebuilt, never its self-mask; survivors only
    unmask = [m for m in grid.delivered if m.metadata.message_type == P.UNMASK]
    assert {m.metadata.dst_node_id for m in unmask} == set(survivors)
    assert all(dropped in m.content[P.RECORD][P.DEAD] for m in unmask)


def test_dropouts_in_stage_two_and_during_unmasking(tmp_path, task_identity):
    config = run_config(tmp_path)
    offline_at_unmask = 101

    def on_deliver(nid: int, msg: Message) -> None:
        if nid == 105 and msg.metadata.message_type == "train":
            raise ConnectionError("gone")
        if nid == offline_at_unmask and msg.metadata.message_type == P.UNMASK:
            raise ConnectionError("gone")

    secure, grid, strategy = one_round(
        config, 5, SecAggPlusAggregator(SecAggParams()), on_deliver=on_deliver
    )
    entry = strategy.ledger.rounds[1]
    assert "skipped" not in entry, entry
    report = entry["secure_aggregation"]
    assert report["masked"] == 4 and report["unmask_answers"] == 3
    assert len(secure) > 0


def test_too_many_dropouts_abort_without_unmasking(tmp_path, task_identity):
    config = run_config(tmp_path)
    dead = {102, 103}

    def on_deliver(nid: int, msg: Message) -> None:
        if nid in dead and msg.metadata.message_type == "train":
            raise ConnectionError("gone")

    arrays, grid, strategy = one_round(
        config, 3, SecAggPlusAggregator(SecAggParams()), on_deliver=on_deliver
    )
    entry = strategy.ledger.rounds[1]
    assert "secure aggregation" in entry["skipped"]
    assert not [m for m in grid.delivered if m.metadata.message_type == P.UNMASK]
    assert len(arrays) == 0  # no aggregate: the global model stays as it was


# ---------------------------------------------------------------- refusals
class LyingServer(SecAggPlusAggregator):
    """Claims a surviving hospital dropped, to get both of its secrets."""

    def _ask(self, state, message_type, records):
        if message_type == P.UNMASK:
            for record in records.values():
                record[P.DEAD] = list(record[P.DEAD]) + list(record[P.ACTIVE])[:1]
        return super()._ask(state, message_type, records)


def test_hospitals_refuse_to_reveal_both_secrets_of_one_hospital(
    tmp_path, task_identity
):
    config = run_config(tmp_path)
    arrays, grid, strategy = one_round(config, 3, LyingServer(SecAggParams()))
    entry = strategy.ledger.rounds[1]
    assert "skipped" in entry
    assert all(e["phase"] == "secagg-unmask" for e in entry["errors"].values())
    unmask_replies = [m for m in grid.replies if m.metadata.message_type == P.UNMASK]
    assert unmask_replies and all(m.has_error() for m in unmask_replies)


def test_out_of_order_and_replayed_requests_are_refused(task_identity):
    context = Context(
        run_id=1,
        node_id=101,
        node_config={"partition-id": 0},
        state=RecordDict(),
        run_config={},
    )
    request = Message(
        RecordDict(
            {
                P.RECORD: ConfigRecord(
                    {P.SESSION: "abc", P.ACTIVE: [101, 102], P.DEAD: []}
                )
            }
        ),
        message_type=P.UNMASK,
        dst_node_id=101,
    )
    reply = secagg_client.unmask(request, context)
    assert (
        reply.has_error() and "unknown secure aggregation session" in reply.error.reason
    )
    setup = Message(
        RecordDict(
            {
                P.RECORD: ConfigRecord(
                    {
                        P.SESSION: "abc",
                        P.ROUND: 1,
                        P.SAMPLE_SIZE: 3,
                        P.NUM_SHARES: 3,
                        P.THRESHOLD: 1,
                        P.CLIPPING_RANGE: 1.0,
                        P.QUANTIZATION_RANGE: 2**20,
                        P.MAX_WEIGHT: 10.0,
                        P.WEIGHTING: "examples",
                        P.L2_CLIP: 0.0,
                    }
                )
            }
        ),
        message_type=P.SETUP,
        dst_node_id=101,
    )
    reply = secagg_client.setup(setup, context)
    assert reply.has_error() and "not a majority" in reply.error.reason
    assert MessageType.TRAIN == "train"


# ---------------------------------------------------------------- central DP hook
class Recording(SecAggPlusAggregator):
    def close_round(self, server_round, replies, ledger_entry):
        self.revealed = super().close_round(server_round, replies, ledger_entry)
        return self.revealed


def test_unit_weights_and_hospital_side_l2_clip_for_central_dp(tmp_path, task_identity):
    """What central DP needs: the unmasked sum of updates each clipped to norm C."""
    config = run_config(tmp_path)
    _, plain_grid, _ = one_round(config, 3)
    clip = 0.05
    aggregator = Recording(SecAggParams(weighting="unit", l2_clip=clip))
    one_round(config, 3, aggregator)
    locals_ = plain_updates(plain_grid)
    base = {
        k: v.numpy().astype(np.float64)
        for k, v in plain_grid.delivered[0].content["arrays"].items()
    }
    expected = 0.0
    for arrays in locals_.values():
        u = np.concatenate([arrays[k].ravel() - base[k].ravel() for k in sorted(base)])
        assert np.linalg.norm(u) > clip  # the clip really bites
        expected = expected + u * min(1.0, clip / np.linalg.norm(u))
    got = aggregator.revealed
    assert got.total_weight == pytest.approx(3.0)
    assert np.max(np.abs(got.weighted_sum - expected)) < 1e-6
