"""normalisation='dp-global': DP cohort statistics, composition and reproduction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from opacus.accountants import PRVAccountant
from support.federation import (
    WDBC_BOUNDS,
    dp_federation_config,
    make_context,
    make_message,
    make_run_config,
)

from app import client_app, server_app
from app.client.handlers import PRIVACY_BUDGET_CODE
from app.client.hospital import model_spec
from app.config import ConfigError, RunConfig
from app.privacy.cohort_stats import QUERY, REPLY_KEY, STATE_KEY, STATISTICS
from data.base import raw_splits
from data.registry import get_dataset
from scripts import cli
from scripts.harness.inprocess import run_inprocess

GLOBAL = {"normalisation": "dp-global", "dp-stats-epsilon": 0.3}


def _query(run_config, context, epsilon=0.3):
    cfg = RunConfig.from_run_config(run_config)
    info = get_dataset(cfg.data_spec()).info()
    config = {
        "num-classes": info.num_classes,
        "input-shape": list(info.input_shape),
        "statistics": ",".join(STATISTICS),
        "mechanism": "laplace",
        "epsilon": epsilon,
    }
    msg = Message(
        content=RecordDict({"config": ConfigRecord(config)}),
        message_type=f"query.{QUERY}",
        dst_node_id=context.node_id,
    )
    return client_app.app(msg, context)


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"normalisation": "dp-global"}, "dp-stats-epsilon"),
        ({"dp-stats-epsilon": 0.5}, "dp-stats-epsilon"),
        ({**GLOBAL, "dp": "central", "dp-target-epsilon": 2.0}, "dp='central'"),
        (
            {**GLOBAL, "dp": "local", "dp-target-epsilon": 0.3, "dp-delta": 1e-3},
            "dp-target-epsilon",
        ),
    ],
)
def test_invalid_combinations_name_the_key(wdbc_bounds, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_run_config(make_run_config(tmp_path, **overrides))


def test_dataset_without_declared_bounds_is_refused_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match="normalisation.*declares none"):
        RunConfig.from_run_config(make_run_config(tmp_path, **GLOBAL))  # wdbc


def test_query_reply_carries_only_noisy_aggregates(
    wdbc_bounds, tmp_path, task_identity
):
    run_config = make_run_config(tmp_path, **GLOBAL)
    context = make_context(run_config, 0, 2)
    reply = _query(run_config, context)
    assert not reply.has_error(), reply.error.reason
    content = reply.content
    assert set(content.keys()) == {REPLY_KEY, "hospital"}
    assert not content.array_records and not content.metric_records
    record = content[REPLY_KEY]
    assert set(record) == {*STATISTICS, "epsilon", "mechanism"}
    site = get_dataset(RunConfig.from_run_config(run_config).data_spec()).hospital(0, 2)
    train, _ = raw_splits(site)
    # Aggregates: one value per class / feature, never one per record.
    assert len(record["label-counts"]) == 2
    assert len(record["centred-sums"]) == len(record["centred-sq-sums"]) == 30
    # Counts are the public num-examples; the feature sums carry Laplace noise.
    assert record["label-counts"] == np.bincount(train.y, minlength=2).tolist()
    lo, hi = np.array(WDBC_BOUNDS).T
    exact = (np.clip(train.x, lo, hi) - (lo + hi) / 2).sum(axis=0)
    noisy = np.asarray(record["centred-sums"])
    assert not np.allclose(noisy, exact)
    # Laplace scale b = d / (eps / 2) in half-range units = 200 * 2500 here.
    assert np.median(np.abs(noisy - exact)) < 20 * 200 * 2500
    # Asked again, the hospital repeats its release: no second spend.
    again = _query(run_config, context).content[REPLY_KEY]
    assert again["centred-sums"] == record["centred-sums"]
    assert context.state[STATE_KEY]["epsilon"] == 0.3


def test_release_past_a_hospital_budget_is_refused(
    wdbc_bounds, tmp_path, task_identity
):
    run_config = make_run_config(
        tmp_path, **GLOBAL, dp="local", **{"dp-noise-multiplier": 1.0}
    )
    context = make_context(
        run_config,
        0,
        2,
        {"partition-id": 0, "num-partitions": 2, "dp-epsilon-budget": 0.2},
    )
    reply = _query(run_config, context)
    assert reply.has_error() and reply.error.code == PRIVACY_BUDGET_CODE
    assert STATE_KEY not in context.state.config_records


def test_reported_epsilon_is_accountant_plus_stats_epsilon(
    wdbc_bounds, tmp_path, task_identity
):
    run_config = make_run_config(
        tmp_path,
        **GLOBAL,
        dp="local",
        **{"dp-noise-multiplier": 1.2, "dp-delta": 1e-3, "batch-size": 64},
    )
    context = make_context(run_config, 0, 2)
    stats = _query(run_config, context).content[REPLY_KEY]
    cfg = RunConfig.from_run_config(run_config)
    model = model_spec(cfg, get_dataset(cfg.data_spec()).info()).build()
    # The server's global statistics (any valid values serve this test).
    config = {
        "server-round": 1,
        "proximal-mu": 0.0,
        "feature-mean": [2500.0] * 30,
        "feature-std": [1000.0] * 30,
    }
    assert stats["epsilon"] == 0.3
    reply = client_app.app(make_message(model, MessageType.TRAIN, config), context)
    assert not reply.has_error(), reply.error.reason
    metrics = reply.content["metrics"]
    n = int(metrics["num-examples"])
    accountant = PRVAccountant()
    accountant.history = [(1.2, 1 / math.ceil(n / 64), math.ceil(n / 64))]
    sgd = accountant.get_epsilon(delta=1e-3)
    assert metrics["dp-sgd-epsilon"] == pytest.approx(sgd, rel=0.01)
    assert metrics["dp-stats-epsilon"] == 0.3
    assert metrics["dp-epsilon"] == pytest.approx(sgd + 0.3, rel=0.01)


def _fail_stats_of(node_id):
    def on_deliver(node, message):
        if node == node_id and message.metadata.message_type == f"query.{QUERY}":
            raise RuntimeError("hospital down")

    return on_deliver


@pytest.mark.slow
def test_federation_composes_budget_and_evaluate_reproduces(
    wdbc_bounds, tmp_path, capsys
):
    run_config = dp_federation_config(tmp_path, **GLOBAL)
    # Hospital 2 (node 103) fails the statistics query; the run carries on.
    run_inprocess(
        server_app.app,
        client_app.app,
        num_hospitals=3,
        run_config=run_config,
        on_deliver=_fail_stats_of(103),
    )
    run_dir = tmp_path / "outputs" / "test-run"
    history = json.loads((run_dir / "history.json").read_text())
    assert history["status"] == "completed"
    norm = history["normalisation"]
    assert norm["released"] == ["hospital-0", "hospital-1"]
    assert len(norm["failed"]) == 1
    # 30 features, ~300 records, epsilon 0.3: the noise drowns every variance, so
    # the server falls back to the public half-range (2500) as the spread.
    assert norm["std"] == pytest.approx([2500.0] * 30)
    assert np.all(np.abs(np.asarray(norm["mean"]) - 2500.0) <= 2500.0)
    eps = history["privacy"]["epsilon"]
    # DP-SGD was planned for 1.0 - 0.3; the releasing hospitals end just under 1.0.
    for name in ("hospital-0", "hospital-1"):
        assert 0.9 < eps[name] <= 1.0
    # The hospital that released nothing spent only its DP-SGD share.
    assert 0.6 < eps["hospital-2"] <= 0.7
    # `medflower evaluate` applies the saved global statistics: same scores.
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                str(run_dir / "final_model.pt"),
                "--data",
                "wdbc",
                "--bootstrap",
                "0",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    final = history["final_server_metrics"]
    assert report["num_examples"] > 0
    assert report["metrics"]["accuracy"] == pytest.approx(final["accuracy"])
    assert report["metrics"]["auc"] == pytest.approx(final["auc"])


def test_too_few_releases_stop_the_run_before_round_one(wdbc_bounds, tmp_path):
    run_config = make_run_config(
        tmp_path, **GLOBAL, **{"num-server-rounds": 1, "report": False}
    )
    grid = run_inprocess(
        server_app.app,
        client_app.app,
        num_hospitals=2,
        run_config=run_config,
        on_deliver=_fail_stats_of(102),
    )
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    assert history["status"] == "stopped"
    assert "released cohort statistics" in history["stop_reason"]
    assert not any(m.metadata.message_type == MessageType.TRAIN for m in grid.delivered)
