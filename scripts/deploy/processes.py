"""Background Flower processes for ``medflower deploy``.

Start with a pid file and a log file, wait until ready, stop by PID.

Each process gets its own session (process group), so stopping it also stops the
SuperExec and ``flwr-*app`` processes it spawned. A pid file records the command
line, so ``stop`` never signals an unrelated process that reused the PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from app.jsonio import write_json
from scripts.deploy.pki import DeployError

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
    executable = Path(record.argv[0]).name
    return any(Path(a).name == executable for a in args[:2])


def alive(pid: int) -> bool:
    """Tell whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_free(host: str, port: int) -> bool:
    """Tell whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
            _reap(record.pid)
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


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


NOISE = ("Protobuf gencode version", "warnings.warn(")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean(text: str, lines: int = 15) -> str:
    """Return the last meaningful lines of Flower output.

    Colour codes and Protobuf version warnings are dropped.
    """
    kept = [
        ANSI.sub("", t)
        for t in text.splitlines()
        if t.strip() and not any(n in t for n in NOISE)
    ]
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


def _proc_table() -> dict[int, tuple[int, int]]:
    """PID -> (parent PID, process group) of every live, non-zombie process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    return [pid for pid, (_, group) in _proc_table().items() if group == pgid]


def descendants(pid: int) -> set[int]:
    """Live children, grandchildren, ... of ``pid``."""
    table = _proc_table()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def stop_group(pgid: int, timeout: float = 15.0) -> None:
    """Stop a session we started and everything it spawned.

    The group id is the leader's PID. SIGTERM first, then SIGKILL whatever is
    left after ``timeout`` seconds.

    Flower detaches a SuperLink's SuperExec into a session of its own, so the
    leader's descendants are collected first and signalled too; a SuperNode's
    SuperExec and ``flwr-clientapp`` children must not outlive it either.
    """
    tree = descendants(pgid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        live = _proc_table()
        for pid in tree:
            if pid in live:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pgid)
            live = _proc_table()
            if not group_members(pgid) and not tree & set(live):
                return
            time.sleep(0.2)


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
            _reap(record.pid)
            lines.append(f"{record.name} (PID {record.pid}) was not running")
        path.unlink(missing_ok=True)
    return lines
