"""``medflower --help`` and ``medflower <command> --help`` answer at once: they
import no torch, MONAI or Flower (each took 12-17 s on a 2-core machine).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.federation import REPO

from scripts.cli import COMMANDS

HEAVY = ("torch", "monai", "flwr")

# Commands whose --help still imports a heavy package, and why (strict: an xfail
# that starts passing fails, so the mark is removed when the import is gone).
STILL_HEAVY: dict[str, str] = {}


def heavy_imports(argv: list[str]) -> list[str]:
    """Top-level heavy packages ``python -X importtime -m scripts.cli argv`` imports."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "scripts.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: medflower" in out.stdout
    # importtime lines: "import time: self | cumulative | <indent>module.name"
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


def _cases() -> list:
    cases = [pytest.param([], id="medflower")]
    for name in COMMANDS:
        marks = []
        if name in STILL_HEAVY:
            marks = [pytest.mark.xfail(strict=True, reason=STILL_HEAVY[name])]
        cases.append(pytest.param([name], id=name, marks=marks))
    return cases


@pytest.mark.parametrize("command", _cases())
def test_help_imports_no_torch_monai_or_flower(command: list[str]) -> None:
    assert heavy_imports([*command, "--help"]) == []


def test_protobuf_warning_is_filtered_where_the_cli_starts() -> None:
    code = (
        "import scripts.cli, warnings, sys\n"
        "warnings.warn('Protobuf gencode version 5.29.0 is older', UserWarning)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0 and "Protobuf gencode" not in out.stderr


def python_in(folder, *args: str) -> subprocess.CompletedProcess:
    """``python args`` run in ``folder`` (a user's folder) with the repo importable."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--model", "final_model.pt"], "--data is required"),
        (["--model", "no-such-model.pt", "--data", "wdbc"], "model file not found"),
    ],
)
def test_evaluate_refuses_missing_inputs_before_importing_torch(argv, said, tmp_path):
    code = (
        "import sys\nfrom scripts.cli import main\n"
        f"code = main(['evaluate', *{argv!r}])\n"
        "print('heavy:', sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    out = python_in(tmp_path, "-c", code)
    assert out.returncode == 2, out.stderr[-2000:]
    assert said in out.stderr
    assert "heavy: []" in out.stdout


def test_a_bad_input_ends_a_command_with_its_message_not_a_traceback(tmp_path):
    out = python_in(tmp_path, "-m", "scripts.cli", "audit", "--model", "missing.pt")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "medflower audit: model file not found: missing.pt" in out.stderr
    assert "Traceback" not in out.stderr


def test_only_the_named_input_errors_are_turned_into_messages():
    from app.config import ConfigError
    from scripts.cli import is_input_error

    assert is_input_error(ConfigError("'seed' must be >= 0, got -1."))
    assert not is_input_error(ValueError("a bug, not an input"))
    assert not is_input_error(KeyError("seed"))
