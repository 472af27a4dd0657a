"""``medflower benchmark scale --deploy``: a hospital's per-message wall time in a
real loopback deployment, medflower against a bare Flower ClientApp.

One deployment on 127.0.0.1, set up as docs/deployment.md's rehearsal does (TLS,
SuperNode authentication, 3 hospitals on heart disease, all by ``medflower
deploy``; app approval off with ``--allow-any-app``: it checks a run's build once,
at its start, not per message), runs two apps one after the other: medflower
(``num-server-rounds`` rounds, a train and an evaluate message per hospital
each) and the bare app of ``bare_app/`` (the same number of messages; its
ClientApp imports torch, loads the received arrays and returns them). In
Flower's deployment engine every message starts a fresh ``flwr-clientapp``
process at the hospital; that process's lifetime (start, imports, setup, the
handler, the reply) is the per-message wall time measured here, by watching the
SuperNodes' process trees.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from scripts.benchmarks.core import BenchmarkResult, default_data_root, progress
from scripts.cli import main as medflower
from scripts.deploy import processes as procs
from scripts.flower.processes import free_port

HOSPITALS = ("cleveland", "hungarian", "switzerland")
BARE_APP = Path(__file__).with_name("bare_app")
RATIO_GOAL = 1.5
CONNECTION = "bench"


@dataclass
class ClientAppWatch:
    """Lifetimes of the ``flwr-clientapp`` processes under some SuperNodes."""

    roots: list[int]
    interval: float = 0.05
    seen: dict[int, tuple[float, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        now = time.time()
        for root in self.roots:
            try:
                children = psutil.Process(root).children(recursive=True)
            except psutil.Error:
                continue
            for proc in children:
                try:
                    if not any("flwr-clientapp" in a for a in proc.cmdline()):
                        continue
                    start = self.seen.get(proc.pid, (proc.create_time(), now))[0]
                except psutil.Error:
                    continue
                self.seen[proc.pid] = (start, now)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    @contextmanager
    def running(self) -> Iterator[ClientAppWatch]:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)

    def lifetimes(self) -> list[float]:
        return sorted(end - start for start, end in self.seen.values())


class Loopback:
    """A TLS loopback deployment of 3 hospitals made with ``medflower deploy``."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root, self.data_dir = root, data_dir
        self.coordinator = root / "coordinator"
        self.flwr_home = root / "submitter"
        self.address = f"127.0.0.1:{free_port()}"
        self.dirs = [self.coordinator]

    def _cli(self, *argv: str) -> None:
        if medflower(["deploy", *argv]) != 0:
            raise RuntimeError(f"medflower deploy {argv[0]} failed")

    def start(self) -> None:
        co, ca = str(self.coordinator), str(self.coordinator / "ca" / "ca.crt")
        self._cli("init-ca", "--dir", co)
        self._cli("superlink-cert", "--dir", co, "--ip", "127.0.0.1")
        port = self.address.rsplit(":", 1)[1]
        self._cli("start-superlink", "--dir", co, "--port", port, "--wait", "180")
        self._cli(
            "connection", "--name", CONNECTION, "--address", self.address,
            "--ca-cert", ca, "--flwr-home", str(self.flwr_home),
        )  # fmt: skip
        for name in HOSPITALS:
            home = self.root / f"hospital-{name}"
            self.dirs.append(home)
            self._cli("hospital-keys", "--dir", str(home), "--name", name)
            self._cli(
                "register", "--public-key", str(home / "keys" / f"{name}.pub"),
                "--name", name, "--connection", CONNECTION,
                "--flwr-home", str(self.flwr_home),
            )  # fmt: skip
            data = home / "data"  # the hospital's own file, and only that
            data.mkdir(parents=True)
            source = self.data_dir / f"processed.{name}.data"
            (data / source.name).symlink_to(source)
            self._cli(
                "start-supernode", "--dir", str(home), "--name", name,
                "--superlink", self.address, "--ca-cert", ca,
                "--data-path", str(data), "--dataset", "heart-disease",
                "--wait", "180", "--allow-any-app",
            )  # fmt: skip

    def supernodes(self) -> list[int]:
        return [
            record.pid
            for home in self.dirs[1:]
            for _, record in procs.running(home)
            if procs.alive(record.pid)
        ]

    def run(self, app: Path, run_config: str, timeout: float) -> list[float]:
        """Run ``app`` once; return its ClientApp processes' lifetimes (s)."""
        watch = ClientAppWatch(self.supernodes())
        with watch.running():
            self._cli(
                "run", "--app", str(app), "--connection", CONNECTION,
                "--flwr-home", str(self.flwr_home), "--run-config", run_config,
                "--timeout", str(timeout),
            )  # fmt: skip
        return watch.lifetimes()

    def stop(self) -> None:
        for home in self.dirs:
            if (home / procs.RUN_DIR).is_dir():
                procs.stop(home)


def with_deploy(args: Any, result: BenchmarkResult) -> BenchmarkResult:
    """``result`` (the scale suite's) with the ``deploy`` section when ``--deploy``."""
    if not getattr(args, "deploy", False):
        return result
    progress("scale: loopback deployment, medflower vs a bare ClientApp ...")
    deploy = deploy_cost(args)
    result.details["deploy"] = deploy
    result.summary["deploy_message_ratio"] = deploy["ratio_median"]
    result.notes.append(
        f"deploy: median wall time of a hospital's ClientApp process per message in a "
        f"TLS loopback deployment of {deploy['hospitals']} hospitals (heart disease): "
        f"medflower {deploy['medflower']['median_s']:.2f}s over "
        f"{deploy['medflower']['messages']} messages, bare Flower "
        f"{deploy['bare_flower']['median_s']:.2f}s over "
        f"{deploy['bare_flower']['messages']}: ratio {deploy['ratio_median']:.2f} "
        f"(goal {deploy['goal']})."
    )
    return result


def _stats(times: list[float]) -> dict[str, Any]:
    return {
        "messages": len(times),
        "median_s": statistics.median(times) if times else float("nan"),
        "mean_s": statistics.fmean(times) if times else float("nan"),
        "max_s": max(times, default=float("nan")),
    }


def deploy_cost(args: Any, *, rounds: int = 3, timeout: float = 900.0) -> dict:
    """Measure both apps on one loopback deployment; the ``deploy`` section."""
    data_dir = default_data_root(args) / "heart-disease"
    if not (data_dir / "processed.cleveland.data").is_file():
        raise FileNotFoundError(f"heart-disease data not found in {data_dir}")
    with tempfile.TemporaryDirectory(prefix="mf-deploy-") as tmp:
        loop = Loopback(Path(tmp), data_dir)
        try:
            loop.start()
            ours = loop.run(
                Path(__file__).resolve().parents[2],
                f"num-server-rounds={rounds} dataset='heart-disease' "
                f"server-eval=false min-hospitals={len(HOSPITALS)} report=false "
                f"output-dir='{Path(tmp) / 'outputs'}'",
                timeout,
            )
            bare = loop.run(
                BARE_APP,
                f"num-server-rounds={rounds} num-hospitals={len(HOSPITALS)}",
                timeout,
            )
        finally:
            loop.stop()
    medflower_stats, bare_stats = _stats(ours), _stats(bare)
    return {
        "hospitals": len(HOSPITALS),
        "rounds": rounds,
        "medflower": medflower_stats,
        "bare_flower": bare_stats,
        "ratio_median": medflower_stats["median_s"] / bare_stats["median_s"],
        "goal": f"<= {RATIO_GOAL}",
        "medflower_s": ours,
        "bare_flower_s": bare,
    }
