"""The final privacy summary names where the training noise came from."""

from __future__ import annotations

import importlib.util

import pytest

from app.config import RunConfig
from app.privacy.server import NOISE_SOURCES, PrivacyReport
from scripts.harness.inprocess import full_run_config

CENTRAL = {
    "mode": "central",
    "unit": "hospital",
    "epsilon": 2.5,
    "delta": 1e-5,
    "accountant": "rdp",
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "sample_rate": 1.0,
    "hospitals_clipped": 0,
    "median_update_norm": 0.3,
}


def _report(mode: str, secure: bool) -> PrivacyReport:
    cfg = RunConfig.from_run_config(
        full_run_config(
            **{"dp": mode, "dp-noise-multiplier": 1.1, "dp-secure-rng": secure}
        )
    )
    report = PrivacyReport(cfg)
    if mode == "central":
        report.central = CENTRAL
    else:
        report.latest = {"hospital-0": 1.25}
    return report


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("mode", ["local", "central"])
def test_the_summary_says_which_generator_made_the_noise(mode, secure, monkeypatch):
    # local DP's secure mode is refused unless torchcsprng is installed: pretend
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "torchcsprng" else find_spec(name, *a),
    )
    lines = _report(mode, secure).lines()
    assert lines[-1].strip() == NOISE_SOURCES[mode, secure]
    other = NOISE_SOURCES[mode, not secure]
    assert all(other not in line for line in lines)


def test_central_noise_without_secure_rng_is_not_called_seeded_or_reproducible():
    # numpy's generator there is seeded by the OS, not by the run's seed
    line = _report("central", False).lines()[-1]
    assert "operating system" in line and "reproducible" not in line
