"""Benchmark suite ``scale`` (``medflower benchmark scale``): medflower against a
bare Flower app of the same shape, in real ``flwr run`` simulations of 10 to 1,000
hospitals (and, with ``--deploy``, per message in a loopback deployment).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from matplotlib.figure import Figure

from app.client.hospital import model_spec
from app.config import RunConfig
from data.registry import get_dataset
from scripts.benchmarks.core import (
    BenchmarkResult,
    progress,
    register,
    suite_dir,
)
from scripts.benchmarks.cost import timed_flwr_run
from scripts.benchmarks.deploy_cost import with_deploy
from scripts.benchmarks.reporting import save_figure
from scripts.harness.inprocess import full_run_config

SCALE_HOSPITALS = (10, 50, 100)
SCALE_QUICK_HOSPITALS = (10, 20)
SCALE_MEMORY_GOAL_GB = 8.0
SCALE_ROUND_RATIO_GOAL = 1.5  # medflower / bare-Flower floor, rounds after the first
SCALE_FIRST_ROUND_RATIO_GOAL = 1.3
# One invocation's wall-clock ratios moved by ~0.2-0.3 between identical runs on
# an idle machine (mostly the floor's own rounds): each app runs this many times,
# alternately, at sizes up to SCALE_REPEAT_MAX_HOSPITALS, and medians are reported.
SCALE_REPEATS = 3
SCALE_REPEAT_MAX_HOSPITALS = 100
FLOOR_APP = Path(__file__).resolve().parent / "floor"  # the bare-Flower app
# A wdbc-like table split IID across N hospitals: wdbc itself (455 pooled records)
# cannot give 1,000 hospitals a training and a held-out record each.
SCALE_RECORDS = 20_000
SCALE_CONFIG: dict[str, Any] = {
    "dataset": "csv",
    "label-column": "target",
    "partitioner": "iid",
    "val-fraction": 0.2,
    "num-server-rounds": 3,
    "min-hospitals": 2,
    "report": False,
}


class TreeMemory:
    """Peak memory of this process's descendants, polled in a background thread.

    The descendants are ``flwr run``, the SuperLink, Ray and its workers.

    Reports the peak sum of RSS (double-counts shared pages, an upper bound) and
    of PSS (shared pages split between the processes sharing them), and
    ``cpu_s``: the CPU seconds (user + system) the processes had used when last
    seen (a process loses at most one interval). On a machine shared with other
    jobs wall time swings with their load; CPU seconds much less. ``steal``: the
    share of the machine's CPU time its hypervisor gave to other guests while
    monitoring (Linux's steal time; 0 where not reported), which slows every
    wall figure without showing in any process.
    """

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self._times: list[Any] = []  # the machine's CPU times on entering, leaving
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        rss = pss = 0
        procs = self._psutil.Process().children(recursive=True)
        for proc in procs:
            try:
                with proc.oneshot():
                    info = proc.memory_full_info()
                    cpu = proc.cpu_times()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            self._cpu[proc.pid] = cpu.user + cpu.system
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(procs))

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every process seen, as last seen."""
        return sum(self._cpu.values())

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._times = [self._psutil.cpu_times()]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._times.append(self._psutil.cpu_times())

    @property
    def steal(self) -> float:
        """Steal time over all CPU time between entering and leaving (0 to 1;
        NaN before leaving).
        """
        if len(self._times) != 2:
            return math.nan
        start, end = self._times
        total = sum(end) - sum(start)
        stolen = getattr(end, "steal", 0.0) - getattr(start, "steal", 0.0)
        return stolen / total if total > 0 else 0.0


@dataclass(frozen=True)
class RoundTimes:
    """A run's round times from its ServerApp's clock.

    ``elapsed`` is the clock at the end of round 0 (initial evaluation), 1, 2, ...
    Round 1 includes starting the Ray actors and their first imports; ``round_s``
    is the median of the rounds after it.
    """

    first_round_s: float
    round_s: float

    @classmethod
    def from_elapsed(cls, elapsed: Sequence[float]) -> RoundTimes:
        per_round = np.diff(np.asarray(elapsed, dtype=float))
        if not len(per_round):
            raise RuntimeError(f"no completed round in elapsed times {elapsed}")
        later = per_round[1:]
        return cls(
            float(per_round[0]), float(np.median(later)) if len(later) else math.nan
        )


def _figure(
    combine: Callable[[list[float]], float] = np.median, runs: bool = False
) -> Any:
    """A run figure and how repeated runs combine into one (``runs``: every run's
    value is kept beside it as ``<name>_runs``).
    """
    return dataclasses.field(metadata={"combine": combine, "runs": runs})


@dataclass(frozen=True)
class RunFigures:
    """What one real ``flwr run`` of an app measured at one federation size."""

    round_s: float = _figure(runs=True)
    first_round_s: float = _figure(runs=True)
    run_s: float = _figure()
    peak_pss_gb: float = _figure(max)  # memory: the largest of the runs
    run_cpu_s: float = _figure()
    cpu_steal: float = _figure()

    @classmethod
    def measured(
        cls, times: RoundTimes, run_s: float, memory: TreeMemory, **more: Any
    ) -> Self:
        """The figures of a run that took ``run_s`` seconds, its rounds ``times``
        and ``memory`` its processes (``more``: a subclass's own fields).
        """
        return cls(
            round_s=times.round_s,
            first_round_s=times.first_round_s,
            run_s=run_s,
            peak_pss_gb=memory.peak_pss / 2**30,
            run_cpu_s=memory.cpu_s,
            cpu_steal=memory.steal,
            **more,
        )


@dataclass(frozen=True)
class MedflowerFigures(RunFigures):
    """A medflower run's figures: the floor's and what only medflower reports."""

    peak_rss_gb: float = _figure(max)
    peak_processes: int = _figure(max)
    hospitals_reporting_min: int = _figure(min)  # the fewest of the runs
    final_accuracy: float = _figure()


def write_scale_table(path: Path, records: int = SCALE_RECORDS, seed: int = 0) -> Path:
    """Write a wdbc-like CSV of ``records`` rows: wdbc rows drawn with replacement,
    each feature jittered by 5% of its standard deviation (30 features, label
    ``target``, 1 = malignant).
    """
    from data.tabular import WDBCDataset

    x, y, names = WDBCDataset(RunConfig().data_spec()).load_table()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y), records)
    jitter = rng.normal(scale=0.05, size=(records, x.shape[1])) * x.std(axis=0)
    table = np.column_stack([np.abs(x[rows] + jitter), y[rows]])
    header = ",".join([*(n.replace(" ", "_") for n in names), "target"])
    fmt = ["%.6g"] * x.shape[1] + ["%d"]
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=fmt)
    return path


def scale_array_sizes(config: Mapping[str, Any]) -> list[int]:
    """Element counts of the scale workload's model arrays (the floor sends these)."""
    cfg = RunConfig.from_run_config(full_run_config(**config))
    info = get_dataset(cfg.data_spec()).info()
    model = model_spec(cfg, info).build()
    return [int(t.numel()) for t in model.state_dict().values()]


def scale_run(num_hospitals: int, config: Mapping[str, Any]) -> MedflowerFigures:
    """One real ``flwr run`` of medflower with ``num_hospitals`` SuperNodes."""
    memory = TreeMemory()
    total, history = timed_flwr_run(config, num_hospitals, monitor=memory)
    times = RoundTimes.from_elapsed([r.elapsed_s for r in history.rounds])
    trained = [len(r.hospitals or {}) for r in history.rounds[1:]]
    return MedflowerFigures.measured(
        times,
        total,
        memory,
        peak_rss_gb=memory.peak_rss / 2**30,
        peak_processes=memory.peak_processes,
        hospitals_reporting_min=min(trained) if trained else 0,
        final_accuracy=history.rounds[-1].server.get("accuracy", math.nan),
    )


def floor_run(num_hospitals: int, array_sizes: Sequence[int]) -> RunFigures:
    """One real ``flwr run`` of the bare-Flower floor app of the same shape."""
    from scripts.benchmarks.floor.floor_app import ROUND_LINE
    from scripts.flower.driver import run_simulation

    rounds = int(SCALE_CONFIG["num-server-rounds"])
    run_config = (
        f"num-server-rounds={rounds} array-sizes='{','.join(map(str, array_sizes))}'"
    )
    memory = TreeMemory()
    start = time.perf_counter()
    with memory:
        outcome = run_simulation(
            app_dir=FLOOR_APP,
            num_hospitals=num_hospitals,
            run_config=run_config,
            echo=False,
        )
    total = time.perf_counter() - start
    progress(f"flwr run of the floor app, {num_hospitals} hospitals, {total:.1f} s")
    line = re.escape(ROUND_LINE).replace(r"\{round\}", r"(\d+)")
    line = line.replace(r"\{elapsed:\.3f\}", r"([0-9.]+)")
    clock = {int(r): float(e) for r, e in re.findall(line, outcome.log)}
    if not outcome.ok or sorted(clock) != list(range(rounds + 1)):
        raise RuntimeError(
            f"the floor app with {num_hospitals} hospitals ended with "
            f"{outcome.status} after rounds {sorted(clock)}:\n{outcome.log[-3000:]}"
        )
    times = RoundTimes.from_elapsed([clock[r] for r in range(rounds + 1)])
    return RunFigures.measured(times, total, memory)


def _repeats_note(asked: int | None) -> str:
    if asked is not None:
        return f"Each app run {asked} time(s) at every size (--repeats)"
    return (
        f"Each app run {SCALE_REPEATS} times at sizes up to "
        f"{SCALE_REPEAT_MAX_HOSPITALS} hospitals and once above (--repeats)"
    )


def scale_repeats(num_hospitals: int, asked: int | None) -> int:
    """Runs of each app at one size: ``--repeats`` when given, else
    ``SCALE_REPEATS`` up to ``SCALE_REPEAT_MAX_HOSPITALS`` hospitals and one above
    (a 1,000-hospital pair takes minutes).
    """
    if asked is not None:
        return asked
    return SCALE_REPEATS if num_hospitals <= SCALE_REPEAT_MAX_HOSPITALS else 1


def combine_runs(runs: Sequence[RunFigures], prefix: str = "") -> dict[str, Any]:
    """One size's figures from its repeated runs, each combined as its field says
    (the median unless the largest or the fewest is meant), keyed
    ``<prefix><name>``; figures marked so keep every run as ``<name>_runs``.
    """
    combined: dict[str, Any] = {}
    for spec in dataclasses.fields(runs[0]):
        values = [getattr(run, spec.name) for run in runs]
        key = f"{prefix}{spec.name}"
        value = spec.metadata["combine"](values)
        combined[key] = int(value) if spec.type == "int" else float(value)
        if spec.metadata["runs"]:
            combined[f"{key}_runs"] = [float(v) for v in values]
    return combined


def scale_size(
    num_hospitals: int,
    config: Mapping[str, Any],
    array_sizes: Sequence[int],
    repeats: int = 1,
) -> dict[str, Any]:
    """Run medflower and the floor (arrays of ``array_sizes`` elements) at one
    federation size, alternately ``repeats`` times; medians and ratios of the
    medians.
    """
    ours_runs, floor_runs = [], []
    for _ in range(repeats):
        ours_runs.append(scale_run(num_hospitals, config))
        floor_runs.append(floor_run(num_hospitals, array_sizes))
    ours, floor = combine_runs(ours_runs), combine_runs(floor_runs, prefix="floor_")
    row = {"hospitals": num_hospitals, "repeats": repeats, **ours, **floor}
    row["round_ratio"] = ours["round_s"] / floor["floor_round_s"]
    row["first_round_ratio"] = ours["first_round_s"] / floor["floor_first_round_s"]
    row["run_cpu_ratio"] = ours["run_cpu_s"] / floor["floor_run_cpu_s"]
    progress(
        f"scale: {num_hospitals} hospitals: {ours['round_s']:.2f}s per round "
        f"(floor {floor['floor_round_s']:.2f}s, x{row['round_ratio']:.2f}), first "
        f"round {ours['first_round_s']:.1f}s (floor "
        f"{floor['floor_first_round_s']:.1f}s, x{row['first_round_ratio']:.2f}), "
        f"peak PSS {ours['peak_pss_gb']:.2f} GB, CPU {ours['run_cpu_s']:.0f}s "
        f"(floor {floor['floor_run_cpu_s']:.0f}s, x{row['run_cpu_ratio']:.2f}), "
        f"CPU steal {ours['cpu_steal']:.0%} (floor {floor['floor_cpu_steal']:.0%})"
        + (f"; medians of {repeats} runs each" if repeats > 1 else "")
    )
    return row


def _scale_figure(rows: Sequence[dict[str, Any]], out_dir: Path) -> str:
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    ns = [r["hospitals"] for r in rows]
    for key, label, marker in (
        ("round_s", "medflower, rounds 2+", "o"),
        ("first_round_s", "medflower, round 1", "s"),
        ("floor_round_s", "bare Flower, rounds 2+", "^"),
        ("floor_first_round_s", "bare Flower, round 1", "v"),
    ):
        left.plot(ns, [r[key] for r in rows], marker=marker, label=label)
    left.set_xscale("log")
    left.set_xlabel("simulated hospitals")
    left.set_ylabel("wall time per round (s)")
    left.legend(fontsize=8)
    right.plot(ns, [r["peak_pss_gb"] for r in rows], marker="o", label="medflower")
    right.plot(ns, [r["floor_peak_pss_gb"] for r in rows], marker="^", label="floor")
    right.axhline(SCALE_MEMORY_GOAL_GB, color="orange", linewidth=1, label="8 GB goal")
    right.set_xscale("log")
    right.set_xlabel("simulated hospitals")
    right.set_ylabel("peak PSS (GB)")
    right.legend(fontsize=8)
    return save_figure(fig, out_dir, "scale.png")


def _scale_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_size = {r["hospitals"]: r for r in rows}
    largest = rows[-1]
    summary: dict[str, Any] = {
        "largest_federation": largest["hospitals"],
        "largest_round_s": largest["round_s"],
        "largest_peak_pss_gb": largest["peak_pss_gb"],
    }
    if largest["hospitals"] >= 1000:  # the memory goal is set for 1,000 hospitals
        summary["goal_memory_le_8gb"] = largest["peak_pss_gb"] <= SCALE_MEMORY_GOAL_GB
    if 100 in by_size:
        at_100 = by_size[100]
        summary["goal_round_ratio_100_le_1_5"] = (
            at_100["round_ratio"] <= SCALE_ROUND_RATIO_GOAL
        )
        summary["goal_first_round_ratio_100_le_1_3"] = (
            at_100["first_round_ratio"] <= SCALE_FIRST_ROUND_RATIO_GOAL
        )
        if 1000 in by_size:
            growth = by_size[1000]["round_s"] / at_100["round_s"]
            summary["round_growth_100_to_1000"] = growth
            summary["goal_growth_le_12"] = growth <= 12
    return summary


@register("scale")
def scale(args: argparse.Namespace) -> BenchmarkResult:
    sizes = getattr(args, "hospitals", None) or (
        SCALE_QUICK_HOSPITALS if getattr(args, "quick", False) else SCALE_HOSPITALS
    )
    with tempfile.TemporaryDirectory(prefix="medflower-scale-") as tmp:
        table = write_scale_table(Path(tmp) / "wdbc-like.csv")
        config = {**SCALE_CONFIG, "data-path": str(table)}
        array_sizes = scale_array_sizes(config)
        repeats = getattr(args, "repeats", None)
        rows = [
            scale_size(n, config, array_sizes, scale_repeats(n, repeats)) for n in sizes
        ]
    notes = [
        "Real `flwr run` simulations (local SuperLink, Ray backend, 1 CPU per "
        "ClientApp: as many actors as cores) of a wdbc-like table of "
        f"{SCALE_RECORDS:,} records (wdbc rows resampled with 5% jitter) split IID, "
        f"logistic regression, {SCALE_CONFIG['num-server-rounds']} rounds, every "
        "hospital trains and evaluates each round.",
        "Floor: a bare Flower app (scripts/benchmarks/floor) of the same shape "
        f"(SuperNodes, arrays of {sum(array_sizes)} values, rounds, FedAvg with a "
        "train and an evaluate exchange per round) whose ClientApp returns its "
        "input, run right after medflower at each size; ratios are medflower / "
        f"floor. {_repeats_note(repeats)}, alternately, and each figure the "
        "median of the runs (peak memory: the largest); ratios of the medians.",
        "round_s: median of the rounds after the first, from each ServerApp's own "
        "clock; peak memory: summed PSS of every process the command started, "
        "polled every 0.5 s; run_cpu_s: CPU seconds (user + system) of those "
        "processes over the whole command (start-up included), less sensitive to "
        "other jobs' load than wall time; cpu_steal: the share of the machine's "
        "CPU time its hypervisor gave to other guests during the run (slows every "
        "wall figure). Machine: 2 CPU cores shared with other jobs.",
    ]
    result = BenchmarkResult(
        suite="scale",
        # the table: one figure per column; each run's timings are in "sizes"
        rows=[{k: v for k, v in r.items() if not k.endswith("_runs")} for r in rows],
        summary=_scale_summary(rows),
        notes=notes,
        plots=[_scale_figure(rows, suite_dir(args, "scale"))],
        sections={"sizes": rows},
    )
    return with_deploy(args, result)  # --deploy: the per-message section
