"""Run-config presets: the shipped files, the resolution rule, the CLI options."""

from __future__ import annotations

import argparse
import math
import tomllib
from pathlib import Path

import pytest
from support.imaging import write_medmnist

from app.config import ConfigError, RunConfig
from app.config.preset import TASK_PRESETS, preset_names, preset_path, read_preset
from app.config.run_config import preset_values
from app.server.runner import evaluation_round
from scripts.harness.inprocess import full_run_config

REPO = Path(__file__).resolve().parents[2]
NPZ = {"data-path": "/data/breastmnist.npz"}


def data_for(name: str) -> dict[str, str]:
    """A data path where preset ``name``'s dataset reads one (the tabular preset's
    bundled wdbc reads none, and a path given with it is refused).
    """
    return NPZ if "dataset" in read_preset(name) else {}


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_is_flat_declared_valid_and_documented(name):
    values = preset_values(name)  # declared keys, parsed and range-checked
    assert values and "preset" not in values
    header = preset_path(name).read_text().split("\n\n")[0].lower()
    assert f'"{name}", version' in header and "chosen" in header
    # the preset alone (plus a data path) is a valid run config
    cfg = RunConfig.from_run_config({"preset": name, **data_for(name)})
    for key, value in values.items():
        assert cfg.to_run_config()[key] == value


@pytest.mark.parametrize("name", preset_names())
def test_flower_reads_each_preset_file_as_run_config_overrides(name):
    from flwr.common.config import fuse_dicts, parse_config_args

    overrides = parse_config_args([str(preset_path(name))])  # flwr run --run-config
    assert overrides == read_preset(name)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    fused = fuse_dicts(pyproject["tool"]["flwr"]["app"]["config"], overrides)
    assert RunConfig.from_run_config({**fused, **data_for(name)}).preset == name


def test_task_recommendation_alone_runs_its_preset():
    mimic = {"dataset": "mimic-demo", "data-path": "/data/mimic-iv-demo-2.2"}
    cfg = RunConfig.from_run_config({"task": "recommendation", **mimic})
    assert cfg.preset == TASK_PRESETS["recommendation"] == "recommendation"
    assert (cfg.optimizer, cfg.learning_rate, cfg.local_epochs) == ("adam", 0.01, 2)
    assert cfg.num_server_rounds == read_preset("recommendation")["num-server-rounds"]
    assert cfg.dataset == "mimic-demo"  # the user's choice wins


def test_task_imaging_alone_runs_the_2d_preset_and_explicit_keys_win():
    preset = read_preset("imaging-2d")
    cfg = RunConfig.from_run_config({"task": "imaging", **NPZ})
    assert cfg.preset == TASK_PRESETS["imaging"] == "imaging-2d"
    assert (cfg.num_server_rounds, cfg.strategy, cfg.eta, cfg.model_ema) == (
        preset["num-server-rounds"],
        "fedadam",
        preset["eta"],
        preset["model-ema"],
    )
    mine = RunConfig.from_run_config(
        {"task": "imaging", **NPZ, "num-server-rounds": 3, "eta": 0.01}
    )
    assert (mine.num_server_rounds, mine.eta, mine.strategy) == (3, 0.01, "fedadam")
    plain = RunConfig.from_run_config(
        {"task": "imaging", "dataset": "medmnist", **NPZ, "preset": "none"}
    )
    assert (plain.preset, plain.strategy, plain.num_server_rounds) == (
        "none",
        "fedavg",
        5,
    )
    # tabular's preset is today's defaults
    assert RunConfig.from_run_config({}) == RunConfig().replace(preset="tabular")


def test_resolution_is_stable_and_saved_configs_are_read_as_saved():
    cfg = RunConfig.from_run_config({"task": "imaging", **NPZ, "seed": 7})
    assert RunConfig.from_run_config(cfg.to_run_config()) == cfg
    assert RunConfig.from_saved(cfg.to_run_config()) == cfg
    built = RunConfig(task="imaging", dataset="medmnist", data_path="/x.npz")
    legacy = {k: v for k, v in built.to_run_config().items() if k != "preset"}
    for saved in (built.to_run_config(), legacy):  # not completed from the preset
        assert RunConfig.from_saved(saved).strategy == "fedavg"


def test_unknown_preset_and_conflicts_are_refused_naming_the_preset():
    with pytest.raises(
        ConfigError, match="'preset' must be one of .*imaging-2d.*'nope'"
    ):
        RunConfig.from_run_config({"preset": "nope"})
    with pytest.raises(ConfigError, match="local-steps.*preset 'imaging-2d' set"):
        RunConfig.from_run_config(
            {"task": "imaging", **NPZ, "dp": "local", "dp-noise-multiplier": 1.0}
        )


def test_evaluation_rounds():
    assert [r for r in range(11) if evaluation_round(r, 4, 10)] == [0, 4, 8, 10]
    auto = RunConfig(num_server_rounds=660, evaluate_every=0)
    assert auto.evaluation_interval == math.ceil(660 / 10)
    assert RunConfig(num_server_rounds=2, evaluate_every=0).evaluation_interval == 1
    assert RunConfig(evaluate_every=3).evaluation_interval == 3


def test_benchmark_and_simulate_options(tmp_path, monkeypatch):
    from scripts.benchmarks.imaging import Setup, imaging_benchmark, preset_setup
    from scripts.cli import build_parser
    from scripts.simulate import flower_run_config, run_config_of

    argv = ["benchmark", "imaging", "--preset", "imaging-2d", "--data", "/a.npz"]
    args = build_parser(argv).parse_args([*argv, "--seeds", "3"])
    assert (args.preset, args.data, args.seeds) == ("imaging-2d", Path("/a.npz"), 3)
    setup = preset_setup("imaging-2d", Path("/a.npz"))
    assert setup.server_optimizer and setup.preset == "imaging-2d"
    assert setup.rounds == read_preset("imaging-2d")["num-server-rounds"]
    assert (setup.hospitals, setup.alpha) == (5, 0.5)
    assert RunConfig.from_run_config(setup.run_config(Path("/a.npz"), Path("/o"), 1))
    assert preset_setup("imaging-2d", Path("/a.npz"), quick=True).rounds == 10
    assert isinstance(setup, Setup)
    (npz := tmp_path / "a.npz").touch()
    for bad, says in (
        ("nope", "unknown --preset 'nope'"),
        ("tabular", "not for images"),
    ):
        with pytest.raises(SystemExit, match=says):
            imaging_benchmark(argparse.Namespace(preset=bad, data=npz, quick=False))
    argv = ["simulate", "--preset", "imaging-2d", "--data", "d.npz"]
    monkeypatch.chdir(tmp_path)
    write_medmnist(tmp_path / "d.npz")  # simulate reads it before a run starts
    values = run_config_of(
        build_parser(argv).parse_args([*argv, "--run-config", "seed=1"]), Path("/o")
    )
    assert flower_run_config(values) == (
        f"seed=1 preset='imaging-2d' data-path='{tmp_path.resolve() / 'd.npz'}' "
        "output-dir='/o'"
    )
    assert full_run_config()["preset"] == "auto"
