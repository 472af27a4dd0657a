"""The private local SuperLink a simulation runs on, started and found by its home.

``flwr run`` against the ``:local:`` address starts a detached SuperLink that keeps
running after the run; the driver starts its own instead, on ports of its own, so
concurrent runs never share one and the driver knows what to stop.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from scripts.flower.processes import free_port


def private_local_superlink(env: dict[str, str]) -> dict[str, str]:
    """Give the local SuperLink this run starts ports of its own, so concurrent
    runs (tests, CI, a user's own `flwr run`) never reuse each other's SuperLink.
    """
    env = dict(env)
    env.setdefault("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
    env.setdefault("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
    return env


def launch_local_superlink(env: dict[str, str]) -> subprocess.Popen:
    """Start the simulation SuperLink that ``flwr run`` with the ``:local:`` address
    expects (same flags as Flower's own launcher).

    Flower would start one itself but waits only 15 s for it, which a loaded
    machine can exceed; starting it here gives it longer and hands us its PID.
    """
    home = (Path(env["FLWR_HOME"]) / "local-superlink").resolve()
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{env['FLWR_LOCAL_CONTROL_API_PORT']}",
        "--host",
        "127.0.0.1",
        "--port",
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"],
        "--log-file",
        str(home / "superlink.log"),
        "--database",
        str(home / "state.db"),
    ]
    return subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_healthy(proc: subprocess.Popen, port: str, timeout: float) -> None:
    """Return once the SuperLink answers on ``port``; raise RuntimeError if it
    exits or stays silent for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited with code {proc.returncode}; see its "
                "superlink.log under $FLWR_HOME/local-superlink"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"flower-superlink did not answer within {timeout:.0f} s")


def superlinks_of(flwr_home: Path) -> set[int]:
    """PIDs of live local SuperLinks whose state lives under ``flwr_home``."""
    prefix = str(flwr_home.resolve())
    found = set()
    for proc in psutil.process_iter(["cmdline", "status"]):
        args = proc.info["cmdline"] or []
        if (
            proc.info["status"] == psutil.STATUS_ZOMBIE
            or not any(a.endswith("flower-superlink") for a in args)
            or "--simulation" not in args
            or "--database" not in args[:-1]
        ):
            continue
        if args[args.index("--database") + 1].startswith(prefix):
            found.add(proc.pid)
    return found
