"""A throwaway Ray head on 127.0.0.1 for the test of ``--ray-address``.

``ray stop`` would stop every Ray process of this user (other runs' too), so the
head is started with ``--block`` in a session of its own, with its own temp dir
and ports, and stopped by its process tree only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scripts.flower.processes import descendants, free_port, stop_group


@dataclass
class RayHead:
    """A running head: its GCS address, temp dir and every PID seen in its tree."""

    address: str
    temp_dir: Path
    pids: set[int] = field(default_factory=set)


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not listen on {port} in {timeout:.0f} s")


def _ports() -> list[str]:
    names = (
        "--port",
        "--node-manager-port",
        "--object-manager-port",
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    )
    return [a for name in names for a in (name, str(free_port()))]


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 90.0) -> Iterator[RayHead]:
    """Start a Ray head (``ray start --head --block``); stop its whole tree after."""
    # short: Ray's socket paths under the temp dir must stay below 107 characters
    temp_dir = Path(tempfile.mkdtemp(prefix="mfray-", dir="/tmp"))
    ports = _ports()
    cmd = [
        _ray_cli(), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
        "--include-dashboard", "false", "--temp-dir", str(temp_dir), *ports,
    ]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    head = RayHead(f"127.0.0.1:{ports[1]}", temp_dir, {proc.pid})
    try:
        _wait_listening(int(ports[1]), proc, timeout)
        yield head
    finally:
        head.pids |= descendants(proc.pid)
        stop_group(proc.pid, timeout=10)
        with contextlib.suppress(ChildProcessError):
            proc.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
