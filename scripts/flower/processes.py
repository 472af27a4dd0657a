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
import time
from collections.abc import Iterable

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
