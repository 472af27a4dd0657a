"""The one driver of ``flwr run --stream``: start, follow, read the final status, stop.

Used by ``medflower simulate`` (a private local SuperLink), ``medflower deploy run``
(a deployment's SuperLink) and the ``scale`` benchmark.

Why so much care: ``flwr run`` exits 0 even when the run fails, and what a
simulation starts outlives a SuperLink that dies: its SuperExec lives in a session
of its own, and ``flwr-simulation`` with its Ray processes, re-parented to init,
went on training for 130+ rounds into the folder of a run already reported failed.
So the driver owns the whole tree: every process it starts and their descendants
(walked while they live), and every process whose environment carries this run's
marker (found even after its parent died). All of them are stopped when the run
ends, fails, times out, or the driver gets SIGINT/SIGTERM.

Only the standard library and psutil are imported here (``medflower --help`` stays
fast; Flower runs in the processes this module starts).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import psutil

from app.server.history import HistoryError, RunStatus, read_history, set_status
from scripts.flower.env import flower_env, is_noise, write_flower_config
from scripts.flower.processes import free_port, process_group, terminate

RUN_ID_PATTERN = re.compile(r"Successfully started run (\d+)")
# Every process the driver starts, and every process those start, inherits it.
MARKER_VAR = "MEDFLOWER_RUN_MARKER"
POLL_S = 1.0  # how often the driver looks at the run while it streams
MARKER_SCAN_S = 5.0  # how often it also scans every process's environment
# After the stream ends, how long `flwr ls` may still say "running" with nothing
# showing that the run is alive (a simulation whose flwr-simulation is gone, a
# deployed run without a timeout) before the driver stops it.
SETTLE_S = 30.0
NOTE_AFTER_S = 10.0  # the status usually flips within a second of the stream's end
# Grace after SIGTERM. A simulation whose Ray head is already gone can spend longer
# in its exit handlers (ray.shutdown retries); it gets SIGKILL after this.
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended.

    Attributes
    ----------
    run_id
        Flower's run id (None when the run was never started).
    status
        ``flwr ls``'s final status (``finished:completed``, ``finished:failed``,
        ...), or what the driver saw: ``failed (the local SuperLink exited ...)``,
        ``timed-out after ...``, ``interrupted (SIGINT)``, ``not-started ...``.
    log
        Everything ``flwr`` printed.
    processes
        PIDs of every process the driver recorded as part of the run (all stopped).
    """

    run_id: str | None
    status: str
    log: str
    processes: frozenset[int] = frozenset()

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


# --- the run's folder -------------------------------------------------------------


def find_run_dir(output_dir: Path, run_id: str | None) -> Path | None:
    """Find the run folder whose history.json names Flower run ``run_id``."""
    if run_id is None or not output_dir.is_dir():
        return None
    for history in output_dir.glob("*/history.json"):
        if history.parent.is_symlink():  # outputs/latest
            continue
        try:
            if str(read_history(history).flower_run_id) == str(run_id):
                return history.parent
        except HistoryError:
            continue
    return None


def record_final_status(run_dir: Path, status: RunStatus) -> None:
    """Set history.json's top-level ``status`` (other fields kept).

    The ServerApp writes ``running`` while it runs; when the run dies with it (or
    the driver had to stop it) only the driver can say how it ended. A run that
    died before writing its history has none to update.
    """
    try:
        set_status(run_dir, status)
    except (OSError, HistoryError):
        return


# --- the local SuperLink ----------------------------------------------------------


def private_local_superlink(env: dict[str, str]) -> dict[str, str]:
    """Give the local SuperLink this run starts ports of its own, so concurrent
    runs (tests, CI, a user's own `flwr run`) never reuse each other's SuperLink.
    """
    env = dict(env)
    env.setdefault("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
    env.setdefault("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
    return env


def _launch_local_superlink(env: dict[str, str]) -> subprocess.Popen:
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


def _wait_healthy(proc: subprocess.Popen, port: str, timeout: float) -> None:
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


# --- flwr ls ----------------------------------------------------------------------


def run_status(
    run_id: str,
    env: dict[str, str],
    app_dir: Path,
    superlink: str | None = None,
    timeout: float = 120.0,
) -> str:
    """The run's status as ``flwr ls`` reports it, e.g. ``finished:completed``
    (on the ``superlink`` connection, else the default one).

    Raises RuntimeError when ``flwr ls`` gives no answer about the run.
    """
    argv = ["flwr", "ls", *([superlink] if superlink else [])]
    try:
        out = subprocess.run(
            [*argv, "--run-id", run_id, "--format", "json"],
            env=env,
            cwd=app_dir,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"`flwr ls` did not answer in {timeout:.0f} s") from err
    try:
        runs = json.loads(out.stdout)["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RuntimeError(
            f"`flwr ls` gave no run list: {out.stdout}{out.stderr}"
        ) from err
    for run in runs:
        if str(run.get("run-id")) == run_id:
            return str(run.get("status"))
    raise RuntimeError(f"run {run_id} not found by `flwr ls`")


# --- processes and signals --------------------------------------------------------


class ProcessTree:
    """Every process one run started.

    The roots the driver starts, their descendants (walked while they live, so a
    process re-parented to init later is still known), and every process whose
    environment carries the run's marker.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.known: dict[int, psutil.Process] = {}
        self._last_marker_scan = 0.0

    def add(self, pid: int) -> None:
        """Record a process the driver started."""
        try:
            self.known.setdefault(pid, psutil.Process(pid))
        except psutil.Error:
            pass

    def scan(self, *, environ: bool = False) -> None:
        """Record the live descendants of every known process; with ``environ``
        (or every MARKER_SCAN_S seconds) also every process carrying the marker.
        """
        now = time.monotonic()
        environ = environ or now - self._last_marker_scan > MARKER_SCAN_S
        children: dict[int, list[psutil.Process]] = {}
        for proc in psutil.process_iter(["ppid"]):
            children.setdefault(proc.info["ppid"], []).append(proc)
            if environ and proc.pid not in self.known and self._marked(proc):
                self.known[proc.pid] = proc
        if environ:
            self._last_marker_scan = now
        frontier = [pid for pid, proc in self.known.items() if _running(proc)]
        while frontier:
            found = [c for pid in frontier for c in children.get(pid, [])]
            found = [c for c in found if c.pid not in self.known]
            self.known.update((c.pid, c) for c in found)
            frontier = [c.pid for c in found]

    def _marked(self, proc: psutil.Process) -> bool:
        try:
            return proc.environ().get(MARKER_VAR) == self.marker
        except psutil.Error:  # gone, or another user's process
            return False

    def running(self, name: str | None = None) -> list[psutil.Process]:
        """Known processes still running (whose command line mentions ``name``)."""
        live = [p for p in self.known.values() if _running(p)]
        if name is None:
            return live
        return [p for p in live if any(name in a for a in _cmdline(p))]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[int]:
        """Stop every known process and their process groups (SIGTERM, then
        SIGKILL after ``timeout`` s); return the PIDs that survived.
        """
        for _ in range(3):  # a process may start another while being stopped
            self.scan(environ=True)
            live = self.running()
            if not live:
                return []
            groups = {g for p in live if (g := process_group(p.pid)) is not None}
            terminate(live, groups=groups, timeout=timeout)
        return [p.pid for p in self.running()]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived while the driver ran (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """While active, SIGINT and SIGTERM raise RunInterrupted (once): the driver
    stops the run in order instead of dying with its processes left running.

    Handlers are installed only in the main thread (Python allows no other) and
    the previous ones are restored on exit; ``pending`` is the first signal seen.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending: int | None = None
        self._holding = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum
        if not self._holding:
            self._holding = True
            raise RunInterrupted(signum)

    def hold(self) -> None:
        """From now on only remember signals (the run is being stopped)."""
        self._holding = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def deliver(self) -> None:
        """Re-raise the remembered signal under the restored handlers, as if it
        had arrived after the run was stopped (SIGINT: KeyboardInterrupt).
        """
        if self.pending is not None:
            signal.raise_signal(self.pending)


# --- the driver -------------------------------------------------------------------


class RunDriver:
    """One ``flwr run --stream`` from submission to final status, owning every
    process it starts.

    Parameters
    ----------
    app_dir
        The Flower app (its pyproject.toml).
    env
        Environment for every ``flwr`` process (see ``flower_env``).
    connection
        SuperLink connection in ``$FLWR_HOME/config.toml``; None = a private local
        simulation SuperLink started (and stopped) by the driver.
    echo
        Print ``flwr``'s output as it comes.
    timeout
        Stop the run after this many seconds (None: no limit).
    output_dir
        Where the ServerApp writes run folders: a run that failed or was stopped
        gets ``"status": "failed"`` in its history.json.
    superlink_timeout
        Seconds the local SuperLink may take to answer.
    """

    def __init__(
        self,
        *,
        app_dir: Path,
        env: dict[str, str],
        connection: str | None = None,
        echo: bool = True,
        timeout: float | None = None,
        output_dir: Path | None = None,
        superlink_timeout: float = 180.0,
    ) -> None:
        marker = uuid.uuid4().hex
        self.app_dir = app_dir
        self.env = {**env, MARKER_VAR: marker}
        self.connection = connection
        self.echo = echo
        self.timeout = timeout
        self.output_dir = output_dir
        self.superlink_timeout = superlink_timeout
        self.tree = ProcessTree(marker)
        self.superlink: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.run_id: str | None = None
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._reader: threading.Thread | None = None

    def run(self, run_args: Sequence[str] = ()) -> RunOutcome:
        """``flwr run <app> [connection] --stream <run_args>``; stop everything it
        started; return how it ended. SIGINT/SIGTERM stop the run, then are
        re-raised (SIGINT as KeyboardInterrupt).
        """
        status = "not-started"
        with Interrupts() as interrupts:
            try:
                if self.connection is None:
                    self._start_local_superlink()
                status = self._submit_and_follow(run_args)
            except RunInterrupted as err:
                status = f"interrupted ({err})"
            finally:
                interrupts.hold()
                self._end(status)
        outcome = RunOutcome(
            self.run_id, status, "".join(self.lines), frozenset(self.tree.known)
        )
        if interrupts.pending is not None:
            self._say(f"run {self.run_id} {status}: stopped, with all it started")
        interrupts.deliver()
        return outcome

    # -- steps, in the order a run goes through them

    def _start_local_superlink(self) -> None:
        self.superlink = _launch_local_superlink(self.env)
        self.tree.add(self.superlink.pid)
        port = self.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
        _wait_healthy(self.superlink, port, self.superlink_timeout)

    def _submit_and_follow(self, run_args: Sequence[str]) -> str:
        where = [self.connection] if self.connection else []
        argv = ["run", str(self.app_dir), *where, "--stream", *run_args]
        proc = self._start_flwr(argv)
        trouble = self._follow(proc)
        if self.run_id is None:
            return trouble or f"not-started (flwr exit {proc.returncode})"
        return trouble or self._conclude()

    def _start_flwr(self, args: list[str]) -> subprocess.Popen:
        """Start a ``flwr`` command in a session of its own (a Ctrl-C reaches only
        the driver, which stops it in order) with its output read by a thread.
        """
        proc = subprocess.Popen(
            ["flwr", *args],
            env=self.env,
            cwd=self.app_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.tree.add(proc.pid)
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()
        return proc

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)
            if self.run_id is None and (match := RUN_ID_PATTERN.search(line)):
                self.run_id = match.group(1)
            if self.echo and not is_noise(line):
                sys.stdout.write(line)
                sys.stdout.flush()

    def _follow(self, proc: subprocess.Popen) -> str | None:
        """Wait for the stream to end; return why the run must be stopped
        instead (None when the stream simply ended).
        """
        while True:
            try:
                proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            self.tree.scan()
            if trouble := self._trouble():
                return trouble
        if self._reader is not None:
            self._reader.join(timeout=10)
        return None

    def _trouble(self) -> str | None:
        """Why the run cannot go on: its local SuperLink died, or time is up."""
        if self.superlink is not None and self.superlink.poll() is not None:
            return (
                "failed (the local SuperLink exited with code "
                f"{self.superlink.returncode})"
            )
        if self._deadline is not None and time.monotonic() > self._deadline:
            status = self._status() or "status unknown"
            if status.startswith("finished"):
                return status
            return f"timed-out after {self.timeout:.0f}s ({status})"
        return None

    def _status(self) -> str | None:
        """``flwr ls``'s status of the run, or None when it gives no answer."""
        assert self.run_id is not None
        try:
            return run_status(self.run_id, self.env, self.app_dir, self.connection)
        except RuntimeError:
            return None

    def _conclude(self) -> str:
        """The final status once the stream has ended. It can end a moment before
        the status flips, or while the run goes on (the stream broke): a run
        that still runs is waited for, not reported failed.
        """
        ended = time.monotonic()
        settle = ended + SETTLE_S
        noted = False
        while True:
            if trouble := self._trouble():  # first: `flwr ls` would revive a SuperLink
                return trouble
            status = self._status()
            if status is not None and status.startswith("finished"):
                return status
            now = time.monotonic()
            if self._still_going():
                settle = now + SETTLE_S
            elif now > settle:
                return f"unfinished ({status or 'status unknown'}; stopped)"
            if not noted and now - ended > NOTE_AFTER_S:
                noted = True
                self._say(
                    f"the output of run {self.run_id} ended while it is "
                    f"{status or 'in an unknown state'}; waiting for it to finish"
                )
            self.tree.scan()
            time.sleep(POLL_S)

    def _still_going(self) -> bool:
        """Whether to keep waiting for a run that is not finished: while its
        simulation process runs; a deployed run (whose processes are not ours to
        see) until the timeout.
        """
        if self.connection is None:
            return bool(self.tree.running("flwr-simulation"))
        return self._deadline is not None

    def _end(self, status: str) -> None:
        """Stop the run and everything started for it; mark a failed run's folder."""
        if self.run_id and self.connection and not status.startswith("finished"):
            # The run lives on a SuperLink we don't own: ask it to stop the run.
            self._flwr_quietly(["stop", self.run_id, self.connection])
        survivors = self.tree.stop()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if survivors:
            print(
                f"medflower: could not stop processes {sorted(survivors)} of run "
                f"{self.run_id}",
                file=sys.stderr,
            )
        if status != "finished:completed" and self.output_dir and self.run_id:
            run_dir = find_run_dir(self.output_dir, self.run_id)
            if run_dir is not None:
                record_final_status(run_dir, "failed")

    def _flwr_quietly(self, args: list[str]) -> None:
        try:
            subprocess.run(
                ["flwr", *args],
                env=self.env,
                cwd=self.app_dir,
                capture_output=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._say(f"`flwr {' '.join(args)}` did not answer")

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"medflower: {text}", flush=True)


# --- the two ways to run ----------------------------------------------------------


def run_simulation(
    *,
    app_dir: Path,
    num_hospitals: int,
    run_config: str = "",
    cpus_per_hospital: int = 1,
    flwr_home: Path | None = None,
    env: dict[str, str] | None = None,
    echo: bool = True,
    timeout: float | None = None,
    output_dir: Path | None = None,
) -> RunOutcome:
    """Simulate ``num_hospitals`` hospitals on a private local SuperLink.

    Parameters are those of :class:`RunDriver`; ``run_config`` is passed to
    ``flwr run --run-config``.
    """
    env = private_local_superlink(env or flower_env(flwr_home))
    home = Path(env["FLWR_HOME"])
    write_flower_config(home)
    federation = (
        f"num-supernodes={num_hospitals} client-resources-num-cpus={cpus_per_hospital}"
    )
    args = ["--federation-config", federation]
    if run_config:
        args += ["--run-config", run_config]
    driver = RunDriver(
        app_dir=app_dir, env=env, echo=echo, timeout=timeout, output_dir=output_dir
    )
    return driver.run(args)


def run_deployed(
    *,
    app_dir: Path,
    connection: str,
    run_config: str = "",
    flwr_home: Path | None = None,
    env: dict[str, str] | None = None,
    echo: bool = True,
    timeout: float | None = None,
    output_dir: Path | None = None,
) -> RunOutcome:
    """Run the app on a deployment's SuperLink (``connection`` in
    ``$FLWR_HOME/config.toml``); an unfinished run is stopped with ``flwr stop``.
    """
    env = env or flower_env(flwr_home)
    args = ["--run-config", run_config] if run_config else []
    driver = RunDriver(
        app_dir=app_dir,
        env=env,
        connection=connection,
        echo=echo,
        timeout=timeout,
        output_dir=output_dir,
    )
    return driver.run(args)
