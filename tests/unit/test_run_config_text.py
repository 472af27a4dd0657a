"""``medflower simulate`` and ``deploy run`` check the run config before they start
anything (:mod:`scripts.flower.run_config`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from support.federation import REPO
from support.imaging import write_medmnist

from data.spec import DataError
from scripts.cli import build_parser
from scripts.flower.run_config import flower_run_config, is_medflower
from scripts.simulate import run_config_of


def _values(*argv: str, output_dir: Path = Path("/out")) -> dict:
    args = build_parser(["simulate"]).parse_args(["simulate", *argv])
    return run_config_of(args, output_dir)


def test_a_toml_run_config_is_read_and_kept_beside_the_output_dir(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text("num-server-rounds = 2\nstrategy = 'fedprox'\nproximal-mu = 0.1\n")
    values = _values("--run-config", str(toml), output_dir=tmp_path)
    # the file's keys survive: appending output-dir to the path used to drop them
    assert values == {
        "num-server-rounds": 2,
        "strategy": "fedprox",
        "proximal-mu": 0.1,
        "output-dir": str(tmp_path),
    }


@pytest.mark.parametrize(
    ("run_config", "says"),
    [
        ("learning-rate=-1.0", "'learning-rate' must be > 0.0, got -1.0"),
        ("no-such-key=1", "Unknown run-config key(s): no-such-key"),
        ("strategy='fedprox' proximal-mu=-0.5", "proximal-mu"),
        ("strategy=fedprox", "invalid format"),  # a string needs quotes
        ("num-server-rounds 3", "not key=value: num-server-rounds 3"),
        ("num-server-rounds=", "not key=value: num-server-rounds="),
    ],
)
def test_a_bad_run_config_is_refused_by_name(run_config, says):
    with pytest.raises(ValueError) as err:
        _values("--run-config", run_config)
    assert says in str(err.value)


def test_data_path_is_made_absolute_and_must_exist(tmp_path, monkeypatch):
    (tmp_path / "site.csv").write_text("a,target\n1,0\n")
    monkeypatch.chdir(tmp_path)
    run_config = "dataset='csv' data-path='site.csv'"
    assert _values("--run-config", run_config)["data-path"] == str(
        tmp_path / "site.csv"
    )
    with pytest.raises(ValueError, match="data-path '/no/such.csv': no such file"):
        _values("--run-config", "dataset='csv' data-path='/no/such.csv'")
    with pytest.raises(ValueError, match="init-model 'start.pt': no such file"):
        _values("--run-config", "init-model='start.pt'")
    with pytest.raises(ValueError, match="--data '/no/such.npz': no such file"):
        _values("--data", "/no/such.npz")


def test_data_that_do_not_fit_the_run_config_are_refused_naming_the_file(tmp_path):
    # read as the ServerApp first reads them: a wrong label column used to start
    # the SuperLink, Ray and the run, and fail 40 s later with a traceback
    table = tmp_path / "site.csv"
    table.write_text("age,outcome\n50,0\n61,1\n")
    run_config = f"dataset='csv' data-path='{table}'"
    with pytest.raises(DataError, match=rf"{table}: no label column 'target'"):
        _values("--run-config", run_config)
    assert _values("--run-config", f"{run_config} label-column='outcome'")
    images = tmp_path / "scans.npz"
    images.write_text("not an npz")
    with pytest.raises(DataError, match="scans.npz"):
        _values("--preset", "imaging-2d", "--data", str(images))


CHECK_IMAGING = """
import sys
from scripts.cli import build_parser
from scripts.simulate import run_config_of
argv = ["simulate", "--preset", "imaging-2d", "--data", sys.argv[1]]
run_config_of(build_parser(["simulate"]).parse_args(argv), "/out")
print(sorted({"torch", "monai"} & set(sys.modules)))
"""


def test_checking_an_imaging_run_reads_its_file_without_torch_or_monai(tmp_path):
    # MONAI's import alone is ~10 s of CPU: the check before a run needs only numpy
    images = write_medmnist(tmp_path / "scans.npz")
    out = subprocess.run(
        [sys.executable, "-c", CHECK_IMAGING, str(images)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "[]"


def test_another_flower_app_keeps_its_own_keys():
    # the benchmarks run bare Flower apps through the same commands
    floor = REPO / "scripts" / "benchmarks" / "floor"
    bare = REPO / "scripts" / "benchmarks" / "bare_app"
    assert is_medflower(REPO) and not is_medflower(floor) and not is_medflower(bare)
    values = _values("--app", str(floor), "--run-config", "array-sizes='60,2'")
    assert values == {"array-sizes": "60,2"}  # no medflower key added or checked


def test_preset_or_data_given_twice_is_refused():
    with pytest.raises(ValueError, match="give 'preset' once"):
        _values("--run-config", "preset='tabular'", "--preset", "tabular")


@pytest.mark.parametrize(
    "values",
    [
        {"num-server-rounds": 3, "learning-rate": 1e-05, "report": False},
        {"data-path": "/a b/it's.npz", "run-name": 'say "hi"', "dp-delta": 0.001},
    ],
)
def test_the_text_given_to_flwr_reads_back_as_the_same_values(values):
    assert parse_config_args([flower_run_config(values)]) == values


def test_deploy_run_refuses_a_bad_config_before_submitting(capsys):
    from scripts.deploy.coordinator import cmd_run

    args = build_parser(["deploy"]).parse_args(
        ["deploy", "run", "--run-config", "strategy='fedavgx'"]
    )
    assert cmd_run(args) == 2
    assert "strategy" in capsys.readouterr().err


def test_deploy_run_passes_another_apps_keys_through(monkeypatch, capsys):
    import scripts.deploy.coordinator as deploy_cli

    sent = {}

    def fake_run_deployed(**kwargs):
        sent.update(kwargs)
        return type("Outcome", (), {"run_id": "1", "status": "done", "ok": True})()

    monkeypatch.setattr(deploy_cli, "run_deployed", fake_run_deployed)
    bare = REPO / "scripts" / "benchmarks" / "bare_app"
    argv = ["deploy", "run", "--app", str(bare), "--run-config", "num-hospitals=3"]
    assert deploy_cli.cmd_run(build_parser(["deploy"]).parse_args(argv)) == 0
    assert sent["run_config"] == "num-hospitals=3"


def test_simulate_refuses_a_bad_config_before_starting_flower(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "simulate",
            "--hospitals",
            "2",
            "--run-config",
            "learning-rate=-1.0",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "'learning-rate' must be > 0.0" in out.stderr
    assert "Successfully started run" not in out.stdout + out.stderr
    assert not any(tmp_path.iterdir())
