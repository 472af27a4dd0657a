import dataclasses
import subprocess
import sys
import tomllib

import pytest
from support.federation import REPO

from app.config import GROUPS, ConfigError, RunConfig


def test_pyproject_has_exactly_the_declared_keys_and_defaults():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    table = pyproject["tool"]["flwr"]["app"]["config"]
    declared = RunConfig.keys()
    # (type, value): 0 == 0.0 == False in Python, but not in a run config.
    assert {k: (type(v), v) for k, v in table.items()} == {
        name: (decl.type, decl.default) for name, decl in declared.items()
    }


def test_every_declaration_is_complete():
    for f in dataclasses.fields(RunConfig):
        decl = RunConfig.keys()[f.name.replace("_", "-")]
        assert f.type == decl.type.__name__, f.name  # annotation = default's type
        assert decl.group in GROUPS
        assert decl.help.endswith(".") and len(decl.help) > 10, decl.name
        if decl.choices is not None:
            assert decl.default in decl.choices, decl.name
        else:
            decl.check(decl.default)


def test_importing_the_config_imports_no_torch_or_strategy():
    # Names are validated from the registries' records, not the classes.
    code = "import sys, app.config; print(sorted({'torch', 'flwr', 'monai', "
    code += "'strategies.fedavg'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


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
        # the bundled wdbc reads no file: the path would be silently ignored
        ({"data-path": "/data/scans"}, "data-path '/data/scans' is given but dataset="),
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
