"""Run-config keys of secure aggregation and their defaults."""

from __future__ import annotations

import pytest

from app.config import ConfigError, RunConfig
from app.secagg.params import SecAggParams, default_num_shares, default_threshold
from app.secagg.registry import params_from_config, secure_aggregator
from app.secagg.secaggplus import SecAggPlusAggregator
from scripts.harness.inprocess import full_run_config


def parse(**overrides):
    return RunConfig.from_run_config(full_run_config(**overrides))


def test_off_by_default_and_one_switch_turns_it_on():
    assert secure_aggregator(parse()) is None
    aggregator = secure_aggregator(parse(**{"secure-aggregation": True}))
    assert isinstance(aggregator, SecAggPlusAggregator)
    assert aggregator.params == SecAggParams()
    assert aggregator.timeout == RunConfig().round_timeout


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"secure-aggregation": True, "min-hospitals": 1}, "min-hospitals"),
        ({"secure-aggregation": True, "secagg-num-shares": 1}, "secagg-num-shares"),
        (
            {
                "secure-aggregation": True,
                "secagg-num-shares": 5,
                "secagg-reconstruction-threshold": 2,
            },
            "strict majority",
        ),
        (
            {
                "secure-aggregation": True,
                "secagg-num-shares": 3,
                "secagg-reconstruction-threshold": 4,
            },
            "strict majority",
        ),
        (
            {"secure-aggregation": True, "secagg-clipping-range": 0.0},
            "secagg-clipping-range",
        ),
        (
            {"secure-aggregation": True, "secagg-quantization-range": 2**31},
            "secagg-quantization-range",
        ),
        ({"secure-aggregation": True, "secagg-max-weight": -1.0}, "secagg-max-weight"),
        ({"aggregation-encryption": "ckks"}, "secure-aggregation"),
        ({"secure-aggregation": True, "strategy": "krum"}, "needs each update"),
        ({"secure-aggregation": True, "task": "vertical"}, "exchanges embeddings"),
        (
            {"secure-aggregation": True, "aggregation-encryption": "paillier"},
            "aggregation-encryption",
        ),
    ],
)
def test_bad_values_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        parse(**overrides)


def test_defaults_derive_from_the_round_size():
    # small federations: everyone holds a share; threshold a strict majority
    assert [default_num_shares(n) for n in (2, 3, 4, 10)] == [2, 3, 4, 10]
    assert [default_threshold(k) for k in (2, 3, 4, 5, 10)] == [2, 2, 3, 3, 6]
    # large ones: an odd, logarithmic neighbourhood (SecAgg+)
    assert default_num_shares(100) == 15 and default_num_shares(1000) == 21
    params = params_from_config(parse(**{"secure-aggregation": True}))
    assert params.for_round(5) == (5, 3)
    explicit = SecAggParams(num_shares=5, threshold=4)
    with pytest.raises(ValueError, match="strict majority"):
        explicit.for_round(3)  # 3 shares cannot honour an explicit threshold of 4
