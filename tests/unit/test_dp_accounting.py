"""Privacy accounting: reference values, composition, serialisation, planning."""

from __future__ import annotations

import math

import pytest
from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from opacus.accountants import PRVAccountant, RDPAccountant

from app.privacy.accounting import (
    compose,
    epsilon_of,
    history_from_record,
    history_to_record,
    plan_noise_multiplier,
)


def test_rdp_reference_value_from_opacus_tests():
    # Pinned in opacus tests/accountants_test.py (sigma=1.5, q=0.04, 2250 steps).
    eps = epsilon_of([(1.5, 0.04, 2250)], delta=1e-5, mechanism="rdp")
    assert eps == pytest.approx(7.32911117143, rel=1e-6)


@pytest.mark.parametrize(
    "mechanism,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)]
)
def test_epsilon_matches_an_accountant_stepped_one_step_at_a_time(mechanism, cls):
    history = compose([], noise_multiplier=1.1, sample_rate=0.1, steps=30)
    history = compose(history, noise_multiplier=1.1, sample_rate=0.1, steps=30)
    assert history == [(1.1, 0.1, 60)]
    reference = cls()
    for _ in range(60):
        reference.step(noise_multiplier=1.1, sample_rate=0.1)
    ours = epsilon_of(history, delta=1e-3, mechanism=mechanism)
    assert ours == pytest.approx(reference.get_epsilon(delta=1e-3), rel=0.01)


def test_epsilon_edge_cases():
    assert epsilon_of([], delta=1e-5, mechanism="prv") == 0.0
    assert math.isinf(epsilon_of([(0.0, 0.1, 5)], delta=1e-5, mechanism="rdp"))


def test_history_survives_a_wire_round_trip_through_state():
    history = [(1.3, 0.125, 16), (0.9, 0.25, 4)]
    state = RecordDict({"dp": history_to_record(history, "rdp")})
    restored = recorddict_from_proto(recorddict_to_proto(state))
    back = history_from_record(restored.config_records["dp"], "rdp")
    assert back == history
    assert epsilon_of(back, delta=1e-4, mechanism="rdp") == epsilon_of(
        history, delta=1e-4, mechanism="rdp"
    )
    with pytest.raises(ValueError, match="dp-accountant"):
        history_from_record(restored.config_records["dp"], "prv")


def test_planned_noise_multiplier_spends_the_target_over_the_run():
    sigma = plan_noise_multiplier(
        target_epsilon=2.0, delta=1e-3, sample_rate=0.125, steps=80, mechanism="rdp"
    )
    eps = epsilon_of([(sigma, 0.125, 80)], delta=1e-3, mechanism="rdp")
    assert 2.0 * 0.98 <= eps <= 2.0
    # Half the steps spend clearly less than the target.
    assert epsilon_of([(sigma, 0.125, 40)], delta=1e-3, mechanism="rdp") < 0.8 * 2.0
