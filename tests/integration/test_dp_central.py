"""Central DP: clipped uniform mean of hospital updates + Gaussian noise, accounted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from opacus.accountants import RDPAccountant
from support.federation import make_run_config

from app import client_app, server_app
from app.privacy.central_dp import CentralDP, GaussianNoise, clip_update
from scripts.harness.inprocess import InProcessGrid, run_inprocess
from strategies.fedavg import HOSPITAL_RECORD, MedFedAvg


def _reply(grid, msg, values, name, n=10):
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": n}),
            HOSPITAL_RECORD: ConfigRecord({"name": name}),
        }
    )
    return Message(content=content, reply_to=msg)


def _strategy(sigma=0.0, seed=0, clip=1.0):
    inner = MedFedAvg(min_hospitals=2)
    if sigma == 0:
        # The constructor needs noise; set 0 afterwards for an exact, noiseless check.
        strategy = CentralDP(
            inner,
            clip_norm=clip,
            delta=1e-5,
            noise_multiplier=1.0,
            accountant="rdp",
            noise=GaussianNoise(seed=seed),
        )
        strategy.noise_multiplier = 0.0
        return strategy
    return CentralDP(
        inner,
        clip_norm=clip,
        delta=1e-5,
        noise_multiplier=sigma,
        accountant="rdp",
        noise=GaussianNoise(seed=seed),
    )


def _round(strategy, updates, current, server_round=1):
    grid = InProcessGrid(client_app.app, len(updates), {})
    arrays = ArrayRecord({"w": Array(np.asarray(current, dtype=np.float32))})
    msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
    replies = [
        _reply(grid, m, np.asarray(current) + u, f"h{i}", n=10 * (i + 1))
        for i, (m, u) in enumerate(zip(msgs, updates, strict=True))
    ]
    return strategy.aggregate_train(server_round, replies)


def test_clip_update_bounds_the_norm():
    clipped, norm = clip_update([np.array([3.0, 4.0]), np.array([12.0])], 1.3)
    assert norm == pytest.approx(13.0)
    assert np.sqrt(sum(np.sum(c**2) for c in clipped)) == pytest.approx(1.3)
    same, _ = clip_update([np.array([0.3, 0.4])], 1.0)
    assert np.allclose(same[0], [0.3, 0.4])


def test_noiseless_aggregate_is_the_uniform_mean_of_clipped_updates():
    strategy = _strategy(sigma=0.0)
    # Update norms 5 (clipped to 1) and 0.5 (kept); weights 10 and 20 are ignored.
    arrays, _ = _round(
        strategy, [np.array([3.0, 4.0]), np.array([0.3, 0.4])], [1.0, 1.0]
    )
    expected = np.array([1.0, 1.0]) + (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 2
    assert np.allclose(arrays["w"].numpy(), expected, atol=1e-6)
    assert strategy.reports[1]["hospitals_clipped"] == 1
    # Hospital-level sensitivity: replacing one hospital moves the result <= 2C/m.
    other = _strategy(sigma=0.0)
    arrays2, _ = _round(
        other, [np.array([-30.0, 0.0]), np.array([0.3, 0.4])], [1.0, 1.0]
    )
    assert (
        np.linalg.norm(arrays2["w"].numpy() - arrays["w"].numpy()) <= 2 * 1.0 / 2 + 1e-6
    )


def test_noise_std_is_sigma_clip_over_sampled_hospitals():
    sigma, clip = 2.0, 0.5
    strategy = _strategy(sigma=sigma, clip=clip, seed=1)
    zeros = np.zeros(20_000)
    arrays, _ = _round(strategy, [zeros, zeros], zeros)
    noise = arrays["w"].numpy().astype(np.float64)
    assert noise.std() == pytest.approx(sigma * clip / 2, rel=0.03)
    assert abs(noise.mean()) < 5 * sigma * clip / 2 / np.sqrt(len(noise))


def test_epsilon_per_round_matches_an_independent_accountant():
    strategy = _strategy(sigma=1.5)
    reference = RDPAccountant()
    last = 0.0
    for rnd in (1, 2, 3):
        _round(strategy, [np.array([0.1]), np.array([0.2])], [0.0], server_round=rnd)
        reference.step(noise_multiplier=1.5, sample_rate=1.0)
        eps = strategy.privacy_report(rnd)["epsilon"]
        assert eps == pytest.approx(reference.get_epsilon(delta=1e-5), rel=0.01)
        assert eps > last
        last = eps


def test_central_dp_run_writes_epsilon_per_round(tmp_path):
    run_config = make_run_config(
        tmp_path,
        **{
            "dp": "central",
            "dp-target-epsilon": 8.0,
            "dp-delta": 1e-3,
            "dp-accountant": "rdp",
            "dp-update-clip-norm": 0.5,
            "num-server-rounds": 2,
        },
    )
    run_inprocess(
        server_app.app, client_app.app, num_hospitals=2, run_config=run_config
    )
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    assert history["status"] == "completed"
    eps = [r["privacy"]["epsilon"] for r in history["rounds"] if "privacy" in r]
    assert len(eps) == 2 and eps[0] < eps[1] <= 8.0
    assert history["rounds"][1]["privacy"]["unit"] == "hospital"
    assert history["privacy"]["epsilon"] == eps[-1]
    # Hospital-level accounting still records every hospital's own metrics.
    assert set(history["rounds"][1]["hospitals"]) == {"hospital-0", "hospital-1"}


def test_accountant_history_survives_a_checkpoint_round_trip():
    strategy = _strategy(sigma=1.5)
    for rnd in (1, 2):
        _round(strategy, [np.array([0.1]), np.array([0.2])], [0.0], server_round=rnd)
    state = json.loads(json.dumps(strategy.state_dict()))  # as a checkpoint stores it
    resumed = _strategy(sigma=1.5)
    resumed.load_state_dict(state)
    assert resumed.history == strategy.history
    assert resumed.epsilon == pytest.approx(strategy.epsilon)
    _round(resumed, [np.array([0.1]), np.array([0.2])], [0.0], server_round=3)
    assert resumed.privacy_report(3)["epsilon"] > strategy.epsilon
    other = CentralDP(
        MedFedAvg(min_hospitals=2),
        clip_norm=1.0,
        delta=1e-5,
        noise_multiplier=1.5,
        accountant="prv",
    )
    with pytest.raises(ValueError, match="dp-accountant"):
        other.load_state_dict(state)
