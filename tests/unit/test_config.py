import tomllib

import pytest
from support.federation import REPO

from app.config import ConfigError, RunConfig


def test_pyproject_defaults_match_dataclass():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    assert declared == RunConfig().to_run_config()


def test_parse_valid_overrides():
    cfg = RunConfig.from_run_config(
        {"strategy": "fedprox", "proximal-mu": 0.1, "num-server-rounds": 3}
    )
    assert cfg.strategy == "fedprox" and cfg.proximal_mu == 0.1
    assert cfg.num_server_rounds == 3


def test_int_accepted_for_float_key():
    assert RunConfig.from_run_config({"learning-rate": 1}).learning_rate == 1.0


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"num-server-round": 3}, "num-server-round"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"num-server-rounds": 2.5}, "num-server-rounds"),
        ({"learning-rate": -0.1}, "learning-rate"),
        ({"strategy": "fedfoo"}, "strategy"),
        ({"partitioner": "shards"}, "partitioner"),
        ({"dirichlet-alpha": 0.0}, "dirichlet-alpha"),
        ({"server-eval": "yes"}, "server-eval"),
        ({"val-fraction": 0.9}, "val-fraction"),
        ({"strategy": "fedprox"}, "proximal-mu"),
        ({"dataset": "heart-disease"}, "data-path"),
        ({"run-name": "../escape"}, "run-name"),
        ({"learning-rate": float("nan")}, "learning-rate"),
    ],
)
def test_bad_config_names_the_key(config, names):
    with pytest.raises(ConfigError, match=names):
        RunConfig.from_run_config(config)


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]
