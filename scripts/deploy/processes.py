"""Background Flower processes for ``medflower deploy``.

Start with a pid file and a log file, wait until ready, stop by PID.

Each process gets its own session (process group), so stopping it also stops the
SuperExec and ``flwr-*app`` processes it spawned (``scripts.flower.processes``). A
pid file records the command line, so ``stop`` never signals an unrelated process
that reused the PID.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from app.jsonio import write_json
from scripts.deploy.pki import DeployError
from scripts.flower.env import is_noise
from scripts.flower.processes import alive, group_members, reap, stop_group

RUN_DIR = "run"
LOG_DIR = "logs"


@dataclass(frozen=True)
class ProcessRecord:
    """What a pid file holds."""

    name: str
    pid: int
    argv: list[str]
    log: str
    port: int | None = None

    @classmethod
    def read(cls, path: Path) -> ProcessRecord:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise DeployError(f"Unreadable pid file {path}: {err}") from err


def pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / RUN_DIR / f"{name}.pid"


def log_file(state_dir: Path, name: str) -> Path:
    return state_dir / LOG_DIR / f"{name}.log"


def is_ours(record: ProcessRecord) -> bool:
    """Tell whether ``record.pid`` still runs the command this module started."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline if a]
    if record.argv[1:2] == ["-m"]:  # ``python -m module``: the module names it
        return args[1:3] == record.argv[1:3]
    executable = Path(record.argv[0]).name
    return any(Path(a).name == executable for a in args[:2])


def start_background(
    state_dir: Path,
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    *,
    port: int | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start ``argv`` detached; output to ``logs/<name>.log``, PID to ``run/``.

    Refuses to start a second copy while the recorded one is still running.
    """
    pidf = pid_file(state_dir, name)
    if pidf.exists():
        old = ProcessRecord.read(pidf)
        if alive(old.pid) and is_ours(old):
            raise DeployError(
                f"{name} is already running (PID {old.pid}, pid file {pidf}); "
                "stop it first with `medflower deploy stop`."
            )
        pidf.unlink()
    logf = log_file(state_dir, name)
    logf.parent.mkdir(parents=True, exist_ok=True)
    pidf.parent.mkdir(parents=True, exist_ok=True)
    with open(logf, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - argv built from validated options
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    record = ProcessRecord(name, proc.pid, list(argv), str(logf), port)
    write_json(pidf, asdict(record))
    return record


def wait_ready(
    record: ProcessRecord,
    *,
    pattern: str | None = None,
    port: tuple[str, int] | None = None,
    failure: str | None = None,
    timeout: float = 60.0,
    offset: int | None = None,
) -> bool:
    """Wait until the log matches ``pattern`` / ``port`` accepts connections.

    Raises DeployError, quoting the log's tail, if the process exits or its log
    matches ``failure`` first; returns False on timeout (still starting). The log
    is read from byte ``offset`` (default: its current end).
    """
    deadline = time.monotonic() + timeout
    logf = Path(record.log)
    if offset is None:  # only what the process writes from now on
        offset = logf.stat().st_size if logf.exists() else 0
    while time.monotonic() < deadline:
        text = _read_from(logf, offset)
        if failure and re.search(failure, text):
            raise DeployError(_died(record, "reported an error"))
        if pattern and re.search(pattern, text):
            return True
        if port and _accepts(*port):
            return True
        if not alive(record.pid):
            reap(record.pid)
            raise DeployError(_died(record, "exited"))
        time.sleep(0.3)
    return False


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean(text: str, lines: int = 15) -> str:
    """Return the last meaningful lines of Flower output.

    Colour codes and Protobuf version warnings are dropped.
    """
    kept = [ANSI.sub("", t) for t in text.splitlines() if t.strip() and not is_noise(t)]
    return "\n".join(kept[-lines:])


def log_tail(path: Path, lines: int = 15) -> str:
    """Return the last meaningful lines of a log file."""
    try:
        return clean(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def _died(record: ProcessRecord, what: str) -> str:
    return (
        f"{record.name} (PID {record.pid}) {what}; log {record.log}:\n"
        f"{log_tail(Path(record.log))}"
    )


def running(state_dir: Path) -> list[tuple[Path, ProcessRecord]]:
    """Pid files under ``state_dir/run`` with their records."""
    run_dir = state_dir / RUN_DIR
    if not run_dir.is_dir():
        return []
    return [(p, ProcessRecord.read(p)) for p in sorted(run_dir.glob("*.pid"))]


def stop(state_dir: Path, name: str | None = None, timeout: float = 15.0) -> list[str]:
    """Stop the processes started from ``state_dir`` (or only ``name``) by PID.

    Returns a line per pid file; the pid file is removed once its process is gone.
    """
    lines = []
    found = running(state_dir)
    if name is not None:
        found = [(p, r) for p, r in found if r.name == name]
        if not found:
            raise DeployError(f"No pid file for {name!r} under {state_dir / RUN_DIR}.")
    for path, record in found:
        if alive(record.pid) and is_ours(record):
            stop_group(record.pid, timeout=timeout)
            lines.append(f"stopped {record.name} (PID {record.pid})")
        elif not alive(record.pid) and group_members(record.pid):
            # The leader exited but its session did not (a reused PID is alive and
            # is never signalled: only our own session's members are).
            stop_group(record.pid, timeout=timeout)
            lines.append(f"stopped what {record.name} (PID {record.pid}) left running")
        else:
            reap(record.pid)
            lines.append(f"{record.name} (PID {record.pid}) was not running")
        path.unlink(missing_ok=True)
    return lines
