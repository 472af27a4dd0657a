"""Robust and adaptive strategies: registry, screening, hand-computed aggregates,
anomaly report, bounded sampling, checkpointable state."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from app.config import ConfigError, RunConfig
from strategies import STRATEGIES, build_strategy
from strategies.anomaly import anomaly_report
from strategies.sampling import FederationStopped, NodeSampler
from strategies.screening import HOSPITAL_RECORD

OPTIONS: dict[str, Any] = {
    "proximal_mu": 0.1,
    "eta": 0.1,
    "beta_1": 0.9,
    "beta_2": 0.99,
    "tau": 1e-3,
    "learning_rate": 0.05,
    "trim_beta": 0.2,
    "num_malicious": 1,
    "num_to_keep": 0,
}


class FakeGrid:
    """Only what sampling needs: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def make(name: str, **kw: Any):
    min_hospitals = kw.pop("min_hospitals", 2)
    opts = {k: OPTIONS[k] for k in STRATEGIES[name].options}
    opts.update(kw)
    return build_strategy(name, min_hospitals=min_hospitals, **opts)


def global_arrays(value: float = 0.0) -> ArrayRecord:
    return ArrayRecord(
        {"w": Array(np.full((3,), value)), "b": Array(np.full((1,), value))}
    )


def reply(instruction: Message, w: list[float], b: float = 0.0, n: int = 10) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {
                    "w": Array(np.asarray(w, dtype=np.float64)),
                    "b": Array(np.asarray([b], dtype=np.float64)),
                }
            ),
            "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0}),
            HOSPITAL_RECORD: ConfigRecord(
                {"name": f"h{instruction.metadata.dst_node_id}"}
            ),
        }
    )
    return Message(content=content, reply_to=instruction)


def instructions(strategy, n: int, server_round: int = 1) -> list[Message]:
    return list(
        strategy.configure_train(
            server_round,
            global_arrays(),
            ConfigRecord(),
            FakeGrid(list(range(1, n + 1))),
        )
    )


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_drops_a_nan_reply_and_aggregates_the_rest(
    name: str, task_identity: None
) -> None:
    strategy = make(name)
    sent = instructions(strategy, 5)
    replies = [reply(m, [1.0, 1.0, 1.0]) for m in sent[:4]]
    replies.append(reply(sent[4], [float("nan"), 1.0, 1.0]))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert np.isfinite(arrays["w"].numpy()).all()
    ledger = strategy.ledger.rounds[1]
    assert list(ledger["rejected"]) == ["h5"]
    assert "NaN" in ledger["rejected"]["h5"]["reason"]
    assert set(ledger["anomaly"]["hospitals"]) == {"h1", "h2", "h3", "h4"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_skips_a_round_below_min_hospitals(
    name: str, task_identity: None
) -> None:
    strategy = make(name, min_hospitals=3)
    sent = instructions(strategy, 3)
    replies = [
        reply(sent[0], [1.0, 1.0, 1.0]),
        reply(sent[1], [2.0, 2.0, 2.0]),
        reply(sent[2], [1.0, 2.0, 3.0], n=0),
    ]  # weight 0: rejected
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics is None
    assert strategy.round_skipped(1)
    assert "min-hospitals=3" in strategy.ledger.rounds[1]["skipped"]


def test_fedmedian_takes_the_coordinate_wise_median(task_identity: None) -> None:
    strategy = make("fedmedian")
    sent = instructions(strategy, 3)
    replies = [
        reply(sent[0], [1.0, 5.0, 0.0]),
        reply(sent[1], [2.0, -1.0, 0.0]),
        reply(sent[2], [100.0, 0.0, 9.0]),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [2.0, 0.0, 0.0])


def test_fedtrimmedavg_cuts_each_end(task_identity: None) -> None:
    strategy = make("fedtrimmedavg", trim_beta=0.2)  # 5 replies: 1 cut at each end
    sent = instructions(strategy, 5)
    values = [-50.0, 1.0, 2.0, 3.0, 50.0]
    replies = [reply(m, [v, v, v]) for m, v in zip(sent, values, strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [2.0, 2.0, 2.0])


def test_krum_keeps_a_model_from_the_honest_cluster(task_identity: None) -> None:
    strategy = make("krum", num_malicious=1)
    sent = instructions(strategy, 5)
    values = [1.0, 1.1, 0.9, 1.05, -40.0]
    replies = [reply(m, [v, v, v]) for m, v in zip(sent, values, strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert 0.9 <= arrays["w"].numpy()[0] <= 1.1


def test_multikrum_default_keeps_n_minus_f(task_identity: None) -> None:
    strategy = make("multikrum", num_malicious=1, num_to_keep=0)
    sent = instructions(strategy, 5)
    values = [1.0, 2.0, 3.0, 4.0, -40.0]
    replies = [reply(m, [v, v, v]) for m, v in zip(sent, values, strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.num_nodes_to_select == 4
    np.testing.assert_allclose(arrays["w"].numpy(), [2.5, 2.5, 2.5])  # equal weights


def test_fedadam_state_round_trip_continues_identically(task_identity: None) -> None:
    def two_rounds(restore_after_first: bool, keep_state: bool = True) -> np.ndarray:
        strategy = make("fedadam")
        sent = instructions(strategy, 2, server_round=1)
        arrays, _ = strategy.aggregate_train(
            1, [reply(sent[0], [1.0, 0.0, 2.0]), reply(sent[1], [3.0, 1.0, 0.0])]
        )
        if restore_after_first:
            state = strategy.state_dict()
            strategy = make("fedadam")
            strategy.load_state_dict(state if keep_state else {})
        sent = list(
            strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid([1, 2]))
        )
        arrays, _ = strategy.aggregate_train(
            2, [reply(sent[0], [0.5, 0.5, 0.5]), reply(sent[1], [1.0, 2.0, -1.0])]
        )
        return arrays["w"].numpy()

    restored = two_rounds(True)
    np.testing.assert_array_equal(restored, two_rounds(False))
    # Without the moments the second step differs: the state really matters.
    assert not np.array_equal(two_rounds(True, keep_state=False), restored)


def test_an_anomalous_hospital_is_warned_about_once_per_run(caplog) -> None:
    strategy = make("fedavg")
    report = {
        "hospitals": {
            "a": {"update_norm": 1.0, "cosine_to_median": 1.0, "flagged": False},
            "bad": {"update_norm": 10.0, "cosine_to_median": -1.0, "flagged": True},
        },
        "median_update_norm": 1.0,
    }
    with caplog.at_level("WARNING", logger="strategies.screening"):
        for server_round in (1, 2, 3):
            strategy._warn_anomalous(server_round, report)
    warned = [r.getMessage() for r in caplog.records if "anomalous" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("Round 1: hospital bad's")


def test_anomaly_report_flags_a_flipped_scaled_update() -> None:
    base = {"w": np.zeros(2)}
    updates = [
        ("a", ArrayRecord({"w": Array(np.array([1.0, 0.0]))})),
        ("b", ArrayRecord({"w": Array(np.array([1.0, 0.2]))})),
        ("c", ArrayRecord({"w": Array(np.array([0.8, 0.0]))})),
        ("bad", ArrayRecord({"w": Array(np.array([-10.0, 0.0]))})),
    ]
    report = anomaly_report(base, updates)
    rows = report["hospitals"]
    # Median update is (0.9, 0.0): hand-computed cosines and norms.
    assert rows["a"]["cosine_to_median"] == pytest.approx(1.0)
    assert rows["b"]["cosine_to_median"] == pytest.approx(1.0 / math.sqrt(1.04))
    assert rows["bad"]["cosine_to_median"] == pytest.approx(-1.0)
    assert rows["bad"]["update_norm"] == pytest.approx(10.0)
    assert [n for n, r in rows.items() if r["flagged"]] == ["bad"]


def test_sampler_gives_up_after_the_wait() -> None:
    now = [0.0]
    sampler = NodeSampler(
        3,
        wait_s=5.0,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    with pytest.raises(FederationStopped, match="min-hospitals=3"):
        sampler.sample(FakeGrid([1, 2]), 1.0, 1, "train")
    assert now[0] == pytest.approx(5.0)


def test_sampler_waits_for_late_hospitals_and_is_deterministic() -> None:
    now = [0.0]
    grid = FakeGrid([1])

    def sleep(s: float) -> None:
        now[0] += s
        if now[0] >= 2.0:
            grid.node_ids = [1, 2, 3, 4]

    sampler = NodeSampler(2, wait_s=60.0, clock=lambda: now[0], sleep=sleep)
    first = sampler.sample(grid, 0.5, 7, "train")
    assert len(first) == 2 and now[0] == pytest.approx(2.0)
    assert sampler.sample(grid, 0.5, 7, "train") == first


@pytest.mark.parametrize(
    "key,value",
    [
        ("trim-beta", 0.5),
        ("num-malicious", -1),
        ("eta", 0.0),
        ("beta-1", 1.0),
        ("tau", 0.0),
        ("poison-fraction", 1.0),
        ("wait-for-hospitals", -1.0),
        ("checkpoint-keep", 0),
        ("strategy", "bulyan"),
    ],
)
def test_out_of_range_strategy_settings_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        RunConfig.from_run_config({key: value})
