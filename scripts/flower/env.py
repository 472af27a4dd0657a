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
# Library warnings every Flower process would print, silenced by PYTHONWARNINGS
# filters that name each one (a blanket ``ignore::UserWarning`` would also hide
# warnings that matter here, from Opacus or torch):
# - Flower's generated protobuf modules warn on every import in every process
#   (CLI, SuperLink, ServerApp, each Ray worker);
# - Ray's ``ray.init`` prints a "Tip" FutureWarning about its future handling of
#   CUDA_VISIBLE_DEVICES for actors without a GPU share. The current behaviour (a
#   hospital given no GPU sees none) is the one we want, so only the tip goes.
PROTOBUF_WARNING = "Protobuf gencode version"
QUIET_WARNINGS = (
    f"ignore:{PROTOBUF_WARNING}:UserWarning",
    "ignore:Tip:FutureWarning:ray._private.worker",
)
# Ray starts one idle worker per CPU when the simulation connects, then the
# ClientApp actors in processes of their own: the idle ones only took ~1 s of CPU
# each while the actors imported their code on the same cores (round 1 of a
# 100-hospital run 0.3-0.5 s longer on 2 cores). Set for every Flower process the
# project starts (a user's own value wins).
RAY_PRESTART = "RAY_prestart_worker_first_driver"
# Lines dropped from what the user sees of a run this project starts:
# - what is left of the Protobuf warning when a process starts without the filter
#   (and the line that quotes its source);
# - Flower's hints on sizing a simulation: the size and each hospital's resources
#   come from ``--federation-config`` here (``medflower simulate --hospitals``), so
#   the deprecation notes on ``options.`` in config.toml (kept there for a bare
#   ``flwr run .``) and the advice to run ``flwr federation simulation-config``
#   do not apply to the run being shown;
# - the WARNING each Ray actor logs when the simulation shuts it down at the end
#   of every run (relayed by Ray only when its log reaches the driver in time).
NOISE = (
    PROTOBUF_WARNING,
    "warnings.warn(",
    "fields in the SuperLink connection configuration are deprecated",
    "deprecated `options.` entries from the SuperLink connection",
    "default simulated SuperNodes changed from 10 to 2",
    "To change federation size, use the following command",
    "flwr federation simulation-config",
    "Manually terminating ClientAppActor",
)


def project_root() -> Path:
    """The repository root (the folder holding this project's pyproject.toml)."""
    return Path(__file__).resolve().parents[2]


def flower_env(
    flwr_home: Path | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for ``flwr`` and the processes it starts.

    Offline switches, a project-local ``FLWR_HOME``, ``MEDFLOWER_HOME`` for
    outputs, the library warning filters, no prestarted Ray workers
    (:data:`RAY_PRESTART`), and this interpreter's bin dir first on PATH (the
    local SuperLink is started as ``flower-superlink`` from PATH).

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
    env.setdefault(RAY_PRESTART, "0")
    env["PYTHONWARNINGS"] = _with_filter(env.get("PYTHONWARNINGS", ""))
    return env


def _with_filter(warnings: str) -> str:
    """``warnings`` (a PYTHONWARNINGS value) with :data:`QUIET_WARNINGS` added
    last, so each wins over a broader user filter for its one message.
    """
    filters = [f for f in warnings.split(",") if f and f not in QUIET_WARNINGS]
    return ",".join([*filters, *QUIET_WARNINGS])


def is_noise(line: str) -> bool:
    """Tell whether a line of Flower output is left out of what the user sees
    (see :data:`NOISE`).
    """
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
