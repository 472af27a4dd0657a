"""Environment and process handling around the ``flwr`` CLI.

``flwr run`` exits 0 even when a run fails and leaves a detached local SuperLink
running; these helpers check the run's final status and stop what they started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
RUN_ID_PATTERN = re.compile(r"Successfully started run (\d+)")


def project_root() -> Path:
    """The repository root (the folder holding this project's pyproject.toml)."""
    return Path(__file__).resolve().parent.parent


def flower_env(
    flwr_home: Path | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for ``flwr``: offline switches, a project-local ``FLWR_HOME``,
    ``MEDFLOWER_HOME`` for outputs, and this interpreter's bin dir first on PATH
    (the local SuperLink is started as ``flower-superlink`` from PATH).
    """
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    root = project_root()
    env["FLWR_HOME"] = str(flwr_home or Path(env.get("FLWR_HOME") or root / ".flwr"))
    env.setdefault("MEDFLOWER_HOME", str(root))
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("RAY_DEDUP_LOGS", "1")
    env.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_local_superlink(env: dict[str, str]) -> dict[str, str]:
    """Give the local SuperLink this call starts ports of its own, so concurrent
    runs (tests, CI, a user's own `flwr run`) never reuse each other's SuperLink.
    """
    env = dict(env)
    env.setdefault("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
    env.setdefault("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
    return env


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


@dataclass(frozen=True)
class SuperLinkProcess:
    pid: int
    database: str


def local_superlinks() -> list[SuperLinkProcess]:
    """Running ``flower-superlink --simulation`` processes (Linux /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if (
            not any(a.endswith("flower-superlink") for a in args)
            or "--simulation" not in args
        ):
            continue
        db = args[args.index("--database") + 1] if "--database" in args else ""
        found.append(SuperLinkProcess(int(entry.name), db))
    return found


def superlinks_of(flwr_home: Path) -> set[int]:
    """PIDs of local SuperLinks whose state lives under ``flwr_home``."""
    prefix = str(flwr_home.resolve())
    return {p.pid for p in local_superlinks() if p.database.startswith(prefix)}


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process (and its session's group), then SIGKILL if needed."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(os.getpgid(pid), sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            try:  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)


def start_local_superlink(
    env: dict[str, str], timeout: float = 180.0
) -> subprocess.Popen:
    """Start the simulation SuperLink that ``flwr run`` with the ``:local:`` address
    expects (same flags as Flower's own launcher), and wait until it answers.

    Flower waits only 15 s for it, which a loaded machine can exceed; starting it
    here gives it longer and hands us its PID.
    """
    home = Path(env["FLWR_HOME"]) / "local-superlink"
    home.mkdir(parents=True, exist_ok=True)
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
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
        port,
        "--log-file",
        str(home / "superlink.log"),
        "--database",
        str(home / "state.db"),
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited with code {proc.returncode}; "
                f"see {home / 'superlink.log'}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    stop_process_group(proc.pid)
    raise RuntimeError(f"flower-superlink did not answer within {timeout:.0f} s")


def run_status(
    run_id: str, env: dict[str, str], app_dir: Path, superlink: str | None = None
) -> str:
    """The run's status as ``flwr ls`` reports it, e.g. ``finished:completed``
    (on the ``superlink`` connection, else the default one).
    """
    out = subprocess.run(
        [
            "flwr",
            "ls",
            *([superlink] if superlink else []),
            "--run-id",
            run_id,
            "--format",
            "json",
        ],
        env=env,
        cwd=app_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        runs = json.loads(out.stdout)["runs"]
    except (json.JSONDecodeError, KeyError) as err:
        raise RuntimeError(
            f"`flwr ls` gave no run list: {out.stdout}{out.stderr}"
        ) from err
    for run in runs:
        if str(run.get("run-id")) == run_id:
            return str(run.get("status"))
    raise RuntimeError(f"run {run_id} not found by `flwr ls`")


@dataclass(frozen=True)
class RunOutcome:
    run_id: str | None
    status: str
    log: str

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def run_simulation(
    *,
    app_dir: Path,
    num_hospitals: int,
    run_config: str = "",
    cpus_per_hospital: int = 1,
    flwr_home: Path | None = None,
    env: dict[str, str] | None = None,
    echo: bool = True,
    keep_superlink: bool = False,
) -> RunOutcome:
    """``flwr run --stream`` a simulation, check its final status, and stop the local
    SuperLink if this call started it.
    """
    env = private_local_superlink(env or flower_env(flwr_home))
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    before = superlinks_of(home)
    write_flower_config(home)
    superlink = start_local_superlink(env)
    cmd = [
        "flwr",
        "run",
        str(app_dir),
        "--stream",
        "--federation-config",
        f"num-supernodes={num_hospitals} client-resources-num-cpus={cpus_per_hospital}",
    ]
    if run_config:
        cmd += ["--run-config", run_config]
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=app_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        proc.wait()
        text = "".join(lines)
        match = RUN_ID_PATTERN.search(text)
        if not match:
            return RunOutcome(None, f"not-started (flwr exit {proc.returncode})", text)
        run_id = match.group(1)
        status = run_status(run_id, env, app_dir)
        for _ in range(50):  # the stream can end a moment before the status flips
            if status.startswith("finished"):
                break
            time.sleep(0.2)
            status = run_status(run_id, env, app_dir)
        return RunOutcome(run_id, status, text)
    finally:
        if not keep_superlink:
            for pid in (superlinks_of(home) - before) | {superlink.pid}:
                stop_process_group(pid)
