"""Local DP-SGD via the ClientApp: cumulative epsilon, state, budgets, federation."""

from __future__ import annotations

import json
import math

import pytest
from flwr.app import MessageType
from opacus.accountants import PRVAccountant, RDPAccountant
from support.federation import make_context, make_message, make_run_config

from app import client_app, server_app
from app.client.handlers import PRIVACY_BUDGET_CODE
from app.client.hospital import model_spec
from app.config import RunConfig
from app.privacy.local_dp import STATE_KEY
from data.registry import get_dataset
from scripts.harness.inprocess import run_inprocess

DP = {"dp": "local", "dp-delta": 1e-3, "batch-size": 64, "num-server-rounds": 3}


def _model(run_config):
    cfg = RunConfig.from_run_config(run_config)
    return model_spec(cfg, get_dataset(cfg.data_spec()).info()).build()


def _train(run_config, context, server_round):
    msg = make_message(
        _model(run_config),
        MessageType.TRAIN,
        {"server-round": server_round, "proximal-mu": 0.0},
    )
    return client_app.app(msg, context)


@pytest.mark.parametrize(
    "accountant,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)]
)
def test_epsilon_is_cumulative_and_matches_an_independent_accountant(
    tmp_path, task_identity, accountant, cls
):
    run_config = make_run_config(
        tmp_path, **DP, **{"dp-noise-multiplier": 1.2, "dp-accountant": accountant}
    )
    context = make_context(run_config, 0, 2)
    epsilons, steps = [], 0
    for rnd in (1, 2, 3):
        reply = _train(run_config, context, rnd)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        metrics = reply.content["metrics"]
        assert "train_loss" not in metrics  # no training-data statistic leaves under DP
        epsilons.append(metrics["dp-epsilon"])
        assert metrics["dp-delta"] == 1e-3
        n = int(metrics["num-examples"])
        q = 1 / math.ceil(n / 64)
        assert metrics["dp-sample-rate"] == pytest.approx(q)
        steps += math.ceil(n / 64)
        assert metrics["dp-steps"] == steps
    assert epsilons[0] < epsilons[1] < epsilons[2]
    reference = cls()
    for _ in range(steps):
        reference.step(noise_multiplier=1.2, sample_rate=q)
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(delta=1e-3), rel=0.01)
    # The history lives in the node's state and only there.
    record = context.state.config_records[STATE_KEY]
    assert list(record["steps"]) == [steps]


def test_target_epsilon_is_spent_over_the_run_then_refused(tmp_path, task_identity):
    run_config = make_run_config(
        tmp_path,
        **{**DP, "num-server-rounds": 2},
        **{"dp-target-epsilon": 2.0, "dp-accountant": "rdp"},
    )
    context = make_context(run_config, 1, 2)
    first = _train(run_config, context, 1).content["metrics"]["dp-epsilon"]
    second = _train(run_config, context, 2).content["metrics"]["dp-epsilon"]
    assert first < second <= 2.0
    assert second >= 0.98 * 2.0  # the plan spends (almost) the whole target
    state_before = list(context.state.config_records[STATE_KEY]["steps"])
    third = _train(run_config, context, 3)
    assert third.has_error()
    assert third.error.code == PRIVACY_BUDGET_CODE
    assert "privacy budget exhausted" in third.error.reason
    # Refused before training: nothing was spent.
    assert list(context.state.config_records[STATE_KEY]["steps"]) == state_before


def test_hospital_with_exhausted_budget_is_left_out_and_the_run_goes_on(tmp_path):
    run_config = make_run_config(
        tmp_path,
        **{**DP, "num-server-rounds": 2},
        **{"dp-noise-multiplier": 1.0, "dp-accountant": "rdp", "min-hospitals": 1},
    )
    node_configs = [
        {"partition-id": 0, "num-partitions": 2},
        {"partition-id": 1, "num-partitions": 2, "dp-epsilon-budget": 0.01},
    ]
    run_inprocess(
        server_app.app,
        client_app.app,
        num_hospitals=2,
        run_config=run_config,
        node_configs=node_configs,
    )
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    assert history["status"] == "completed"
    eps = []
    for entry in history["rounds"][1:]:
        ((refused, error),) = entry["errors"].items()
        assert refused == "hospital-1"
        assert "privacy budget exhausted" in error["reason"]
        assert entry["privacy"]["refused_budget"] == [refused]
        assert [h for h, v in entry["hospitals"].items() if "train" in v] == [
            "hospital-0"
        ]
        eps.append(entry["privacy"]["epsilon"]["hospital-0"])
        assert entry["hospitals"]["hospital-0"]["train"]["dp-epsilon"] == eps[-1]
    assert eps[0] < eps[1]
    assert history["privacy"]["epsilon"] == {"hospital-0": eps[-1]}


@pytest.mark.parametrize("sampler", ["layers", "opacus"])
def test_imaging_federation_with_local_dp(tmp_path, sampler):
    """poolcnn under DP-SGD in every hospital, with either per-sample engine."""
    from support.imaging import write_medmnist

    from models.checkpoint import load_model

    npz = write_medmnist(tmp_path / "tiny.npz", counts=(64, 8, 16))
    run_config = make_run_config(
        tmp_path,
        **{
            "task": "imaging",
            "preset": "none",  # imaging-2d's one local step is refused under DP-SGD
            "dataset": "medmnist",
            "data-path": str(npz),
            "num-server-rounds": 2,
            "batch-size": 8,
            "seed": 3,
            "dp": "local",
            "dp-noise-multiplier": 1.0,
            "dp-delta": 1e-3,
            "dp-grad-sampler": sampler,
        },
    )
    run_inprocess(
        server_app.app, client_app.app, num_hospitals=2, run_config=run_config
    )
    run_dir = tmp_path / "outputs" / "test-run"
    history = json.loads((run_dir / "history.json").read_text())
    assert history["status"] == "completed" and history["model"] == "poolcnn"
    first, second = (r["privacy"]["epsilon"] for r in history["rounds"][1:])
    assert set(first) == {"hospital-0", "hospital-1"}
    # 32 records, batch 8: q = 1/4, 4 Poisson steps per round at sigma = 1
    accountant = PRVAccountant()
    for steps in (4, 8):
        accountant.history = [(1.0, 0.25, steps)]
        expected = accountant.get_epsilon(delta=1e-3)
        assert (first if steps == 4 else second)["hospital-0"] == pytest.approx(
            expected, rel=0.01
        )
    model, _ = load_model(run_dir / "final_model.pt")
    assert all(k.startswith(("features.", "head.")) for k in model.state_dict())
