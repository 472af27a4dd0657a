"""The environment every ``flwr`` process gets: offline, quiet, project-local."""

from __future__ import annotations

import os
import sys
from pathlib import Path

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
# Flower's generated protobuf modules warn on every import in every process (CLI,
# SuperLink, ServerApp, each Ray worker). Only that message is silenced: a blanket
# ``ignore::UserWarning`` would also hide warnings that matter here (Opacus, torch).
PROTOBUF_WARNING = "Protobuf gencode version"
QUIET_WARNINGS = f"ignore:{PROTOBUF_WARNING}:UserWarning"
# What is left of that warning when a process starts without the filter (and the
# line that quotes its source): dropped from what the user sees.
NOISE = (PROTOBUF_WARNING, "warnings.warn(")


def project_root() -> Path:
    """The repository root (the folder holding this project's pyproject.toml)."""
    return Path(__file__).resolve().parents[2]


def flower_env(
    flwr_home: Path | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for ``flwr`` and the processes it starts.

    Offline switches, a project-local ``FLWR_HOME``, ``MEDFLOWER_HOME`` for
    outputs, the Protobuf warning filter, and this interpreter's bin dir first on
    PATH (the local SuperLink is started as ``flower-superlink`` from PATH).

    Parameters
    ----------
    flwr_home
        Flower's config and state folder (default: ``$FLWR_HOME``, else
        ``<repo>/.flwr``).
    base
        Environment to start from (default: this process's).
    """
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    root = project_root()
    env["FLWR_HOME"] = str(flwr_home or Path(env.get("FLWR_HOME") or root / ".flwr"))
    env.setdefault("MEDFLOWER_HOME", str(root))
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("RAY_DEDUP_LOGS", "1")
    env["PYTHONWARNINGS"] = _with_filter(env.get("PYTHONWARNINGS", ""))
    return env


def _with_filter(warnings: str) -> str:
    """``warnings`` (a PYTHONWARNINGS value) with the Protobuf filter added last,
    so it wins over a broader user filter for that one message.
    """
    filters = [f for f in warnings.split(",") if f and f != QUIET_WARNINGS]
    return ",".join([*filters, QUIET_WARNINGS])


def is_noise(line: str) -> bool:
    """Tell whether a line of Flower output is the Protobuf warning's residue."""
    return any(n in line for n in NOISE)


def write_flower_config(flwr_home: Path, num_hospitals: int = 4, cpus: int = 1) -> Path:
    """Create ``$FLWR_HOME/config.toml`` with a local simulation connection whose
    default size is ``num_hospitals`` (used by a bare ``flwr run .``), unless the
    file exists already.
    """
    path = flwr_home / "config.toml"
    if not path.exists():
        flwr_home.mkdir(parents=True, exist_ok=True)
        path.write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
            f"options.num-supernodes = {num_hospitals}\n"
            f"options.backend.client-resources.num-cpus = {cpus}\n"
        )
    return path
