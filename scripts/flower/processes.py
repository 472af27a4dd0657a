"""Processes around Flower: free ports, process trees, and the one way to stop them.

Flower detaches what it starts: a SuperLink puts its SuperExec in a session of its
own, and ``flwr-simulation`` with its Ray processes stays there after the SuperLink
is gone. Stopping "a process" therefore means its process group, its descendants
(also those that left the group) and, after a grace period, SIGKILL for what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from types import FrameType, TracebackType

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Tell whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _running(proc: psutil.Process) -> bool:
    """Running and not a zombie (``is_running`` also guards against PID reuse)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    """Tell whether ``pid`` exists and is not a zombie."""
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (so it leaves no zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def descendants(pid: int) -> set[int]:
    """Live children, grandchildren, ... of ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return set()
    return {c.pid for c in children if _running(c)}


def process_group(pid: int) -> int | None:
    """``pid``'s process group, or None once it is gone."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    return [
        p.pid
        for p in psutil.process_iter()
        if process_group(p.pid) == pgid and _running(p)
    ]


def stop_group(pgid: int, timeout: float = 15.0) -> None:
    """Stop a session we started and everything it spawned.

    The group id is the leader's PID. The leader's descendants are collected
    first, as some of them (a SuperLink's SuperExec) live in sessions of their own.
    """
    tree = [psutil.Process(p) for p in {pgid, *descendants(pgid)} if alive(p)]
    terminate(tree, groups={pgid}, timeout=timeout)


def terminate(
    processes: Iterable[psutil.Process],
    *,
    groups: Iterable[int] = (),
    timeout: float = 15.0,
) -> list[psutil.Process]:
    """SIGTERM ``processes`` and the process ``groups``; SIGKILL what is left
    after ``timeout`` seconds. Returns the processes that survived even that.

    This process and its own group are never signalled. A ``psutil.Process``
    whose PID was reused by an unrelated process is not signalled either.
    """
    me = os.getpid()
    procs = [p for p in processes if p.pid != me]
    groups = set(groups) - {os.getpgrp()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        procs, groups = _wait_gone(procs, groups, timeout)
        if not procs and not groups:
            break
    return procs


def _wait_gone(
    procs: list[psutil.Process], groups: set[int], timeout: float
) -> tuple[list[psutil.Process], set[int]]:
    """Wait up to ``timeout`` s for ``procs`` and ``groups`` to be gone (children
    are reaped); return what is still there.
    """
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            reap(proc.pid)
        procs = [p for p in procs if _running(p)]
        groups = {g for g in groups if group_members(g)}
        if (not procs and not groups) or time.monotonic() > deadline:
            return procs, groups
        time.sleep(0.1)


# --- the processes of one run, and signals while it runs ----------------------------

# Every process the driver starts, and every process those start, inherits it.
MARKER_VAR = "MEDFLOWER_RUN_MARKER"
MARKER_SCAN_S = 5.0  # how often it also scans every process's environment
# Grace after SIGTERM. A simulation whose Ray head is already gone can spend longer
# in its exit handlers (ray.shutdown retries); it gets SIGKILL after this.
STOP_TIMEOUT_S = 5.0


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
