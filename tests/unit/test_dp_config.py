"""DP settings that would not mean what they say fail early, naming the key."""

from __future__ import annotations

import pytest

from app.config import ConfigError, RunConfig


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"dp-target-epsilon": 1.0}, "dp-target-epsilon"),
        ({"dp-noise-multiplier": 1.0}, "dp-noise-multiplier"),
        ({"dp-secure-rng": True}, "dp-secure-rng"),
        ({"dp-grad-sampler": "opacus"}, "dp-grad-sampler"),
        (
            {"dp": "central", "dp-noise-multiplier": 1.0, "dp-grad-sampler": "opacus"},
            "dp-grad-sampler",
        ),
        (
            {"dp": "local", "dp-noise-multiplier": 1.0, "dp-grad-sampler": "x"},
            "dp-grad-sampler",
        ),
        ({"dp": "local"}, "dp-noise-multiplier"),
        (
            {"dp": "local", "dp-noise-multiplier": 1.0, "dp-target-epsilon": 1.0},
            "dp-target-epsilon",
        ),
        (
            {"dp": "local", "dp-target-epsilon": 3.0, "dp-epsilon-budget": 2.0},
            "dp-epsilon-budget",
        ),
        (
            {
                "dp": "local",
                "dp-noise-multiplier": 1.0,
                "strategy": "fedprox",
                "proximal-mu": 0.1,
            },
            "proximal-mu",
        ),
        (
            {"dp": "central", "dp-noise-multiplier": 1.0, "dp-epsilon-budget": 2.0},
            "dp-epsilon-budget",
        ),
        ({"dp": "local", "dp-noise-multiplier": 1.0, "dp-delta": 0.0}, "dp-delta"),
        ({"dp": "local", "dp-noise-multiplier": 1.0, "dp-delta": 0.5}, "dp-delta"),
        (
            {"dp": "local", "dp-noise-multiplier": 1.0, "dp-max-grad-norm": 0.0},
            "dp-max-grad-norm",
        ),
        (
            {"dp": "local", "dp-noise-multiplier": 1.0, "dp-accountant": "gdp"},
            "dp-accountant",
        ),
        ({"dp": "laplace"}, "dp"),
        (
            {"dp": "local", "dp-noise-multiplier": 1.0, "resume-from": "outputs/run"},
            "resume-from",
        ),
        (
            {"dp": "local", "dp-noise-multiplier": 1.0, "personalize-epochs": 2},
            "personalize-epochs",
        ),
        (
            {"dp": "central", "dp-noise-multiplier": 1.0, "strategy": "fedmedian"},
            "strategy",
        ),
    ],
)
def test_invalid_dp_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        RunConfig.from_run_config(overrides)


def test_secure_rng_needs_torchcsprng():
    pytest.importorskip("opacus")
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="torchcsprng"):
            RunConfig(dp="local", dp_noise_multiplier=1.0, dp_secure_rng=True)
    else:
        RunConfig(dp="local", dp_noise_multiplier=1.0, dp_secure_rng=True)


def test_valid_dp_settings_and_budget():
    cfg = RunConfig.from_run_config({"dp": "local", "dp-target-epsilon": 1.0})
    assert cfg.dp_budget == 1.0
    assert RunConfig(dp="local", dp_noise_multiplier=1.0).dp_budget == float("inf")
    assert (
        RunConfig(dp="local", dp_noise_multiplier=1.0, dp_epsilon_budget=4.0).dp_budget
        == 4.0
    )
    RunConfig(dp="central", dp_target_epsilon=5.0, dp_secure_rng=True)
