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
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.server.history import HistoryError, RunStatus, read_history, set_status
from scripts.flower.cluster import with_ray_cluster
from scripts.flower.env import flower_env, is_noise, write_flower_config
from scripts.flower.processes import (
    MARKER_VAR,
    Interrupts,
    ProcessTree,
    RunInterrupted,
)
from scripts.flower.superlink import (
    launch_local_superlink,
    private_local_superlink,
    wait_healthy,
)

RUN_ID_PATTERN = re.compile(r"Successfully started run (\d+)")
POLL_S = 1.0  # how often the driver looks at the run while it streams
# After the stream ends, how long `flwr ls` may still say "running" with nothing
# showing that the run is alive (a simulation whose flwr-simulation is gone, a
# deployed run without a timeout) before the driver stops it.
SETTLE_S = 30.0
NOTE_AFTER_S = 10.0  # the status usually flips within a second of the stream's end


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
        self.superlink = launch_local_superlink(self.env)
        self.tree.add(self.superlink.pid)
        port = self.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
        wait_healthy(self.superlink, port, self.superlink_timeout)

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


def federation_config(
    num_hospitals: int, cpus_per_hospital: int = 1, gpus_per_hospital: float = 0.0
) -> str:
    """``flwr run --federation-config`` of a simulation: its size and what each
    ClientApp actor reserves.

    Ray runs as many ClientApp actors at once as fit the machine: cores //
    ``cpus_per_hospital`` (and, with ``gpus_per_hospital`` > 0, GPUs //
    ``gpus_per_hospital``; 0.25 puts four actors on one GPU).
    """
    if cpus_per_hospital < 1:
        raise ValueError(f"cpus per hospital must be >= 1, got {cpus_per_hospital}")
    if gpus_per_hospital < 0:
        raise ValueError(f"gpus per hospital must be >= 0, got {gpus_per_hospital}")
    config = (
        f"num-supernodes={num_hospitals} client-resources-num-cpus={cpus_per_hospital}"
    )
    if gpus_per_hospital:
        config += f" client-resources-num-gpus={gpus_per_hospital}"
    return config


def concurrent_actors(
    num_hospitals: int, cpus_per_hospital: int = 1, cores: int | None = None
) -> int:
    """How many ClientApps a simulation runs at once on ``cores`` CPU cores (by CPU;
    a GPU share per hospital may lower it further).
    """
    cores = cores or os.cpu_count() or 1
    return max(1, min(num_hospitals, cores // cpus_per_hospital))


def run_simulation(
    *,
    app_dir: Path,
    num_hospitals: int,
    run_config: str = "",
    cpus_per_hospital: int = 1,
    gpus_per_hospital: float = 0.0,
    flwr_home: Path | None = None,
    env: dict[str, str] | None = None,
    echo: bool = True,
    timeout: float | None = None,
    output_dir: Path | None = None,
    ray_address: str | None = None,
) -> RunOutcome:
    """Simulate ``num_hospitals`` hospitals on a private local SuperLink.

    Parameters are those of :class:`RunDriver`; ``run_config`` is passed to
    ``flwr run --run-config``; ``ray_address`` (``HOST:PORT``) runs the hospitals
    on that existing Ray cluster instead of a Ray instance of the run's own
    (:mod:`scripts.flower.cluster`); the resources of each
    hospital's ClientApp are those of :func:`federation_config` (by default 1
    CPU: one actor per core).
    """
    federation = federation_config(num_hospitals, cpus_per_hospital, gpus_per_hospital)
    env = private_local_superlink(env or flower_env(flwr_home))
    if ray_address:
        env = with_ray_cluster(env, ray_address)
    home = Path(env["FLWR_HOME"])
    write_flower_config(home)
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
