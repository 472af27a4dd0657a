"""``medflower benchmark <suite>``: measured comparisons that print their numbers.

Each suite is a function ``(args) -> BenchmarkResult``, declared in ``SUITES`` by
name, module and description, and registered by ``@register`` in its module, which
is imported only when that suite runs (listing the suites imports no torch or
Flower). :func:`write_result` writes ``outputs/benchmarks/<suite>/results.json``
(numbers) and ``results.md`` (the formatted table) and the command prints the table;
meanwhile :data:`progress` says on stderr what each suite has finished.
Adding a suite is one function plus one ``SUITES`` line.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jsonio import write_json
from scripts.flower.env import project_root

# Suite name -> (module that defines it, one-line description). Declared here so
# that listing the suites needs no import of the suites (torch, MONAI, Flower).
SUITES: dict[str, tuple[str, str]] = {
    "heart": (
        "scripts.benchmarks.heart",
        "Fed-Heart-Disease (4 real hospitals): pooled vs local-only vs "
        "FedAvg/FedProx/FedYogi, accuracy mean ± std over seeds",
    ),
    "cost": (
        "scripts.benchmarks.cost",
        "cost of federation: simulation / centralized wall time, DP-SGD / plain "
        "step time, bytes per hospital per round / model size",
    ),
    "scale": (
        "scripts.benchmarks.scale",
        "10/50/100 (--hospitals) simulated hospitals under `flwr run`, each against "
        "a bare-Flower app of the same shape: seconds per round, ratios, peak memory",
    ),
    "imaging": (
        "scripts.benchmarks.imaging",
        "a run-config preset (--preset, default imaging-2d) on BreastMNIST or any "
        "MedMNIST-format --data file, 5 hospitals (Dirichlet 0.5): federated vs "
        "centralized test AUC",
    ),
    "privacy": (
        "scripts.benchmarks.privacy",
        "local DP-SGD on heart disease: accuracy, step time, MIA AUC",
    ),
    "dp-step": (
        "scripts.benchmarks.dp_step",
        "DP-SGD step time / plain step time of the default models",
    ),
    "personalization": (
        "scripts.benchmarks.personalization",
        "per-hospital accuracy before/after personalization",
    ),
    "poisoning": (
        "scripts.benchmarks.poisoning",
        "FedAvg vs robust strategies, clean and 20% poisoning hospitals",
    ),
    "secagg": (
        "scripts.benchmarks.secagg",
        "secure aggregation (SecAgg+, CKKS) vs plain FedAvg: time, accuracy",
    ),
    "vertical": (
        "scripts.benchmarks.vertical",
        "vertical FL (PSI + split NN) vs label holder alone vs centralised",
    ),
    "recommendation": (
        "scripts.benchmarks.recommendation",
        "federated collaborative filtering (MIMIC-IV demo drugs/labs, or --data): "
        "pooled, local-only, popularity, FedAvg/FedProx, DP, SecAgg+; HR@10, NDCG@10",
    ),
}


@dataclass
class BenchmarkResult:
    """A suite's table (rows of equal keys), headline figures and notes.

    Cells and summary values are numbers, booleans, labels or the typed values
    below (:class:`MeanSD`, :class:`Values`): results.json keeps them as numbers,
    results.md and the printed table format them.
    """

    suite: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # results.json only
    # Top-level results.json entries of their own (the scale suite's "sizes").
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeanSD:
    """A mean and its standard deviation: ``{"mean", "sd"}`` in results.json."""

    mean: float
    sd: float

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.3f} ± {self.sd:.3f}"

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "sd": self.sd}


@dataclass(frozen=True)
class Values:
    """Several values shown in one cell (``fmt`` each, joined by ``sep``).

    results.json holds the list; an empty one shows as ``-``.
    """

    values: tuple[Any, ...]
    fmt: str = ".3f"
    sep: str = " "

    def __str__(self) -> str:
        if not self.values:
            return "-"
        return self.sep.join(format(v, self.fmt) for v in self.values)

    def to_json(self) -> list[Any]:
        return list(self.values)


def judged_goals(summary: Mapping[str, Any], judged: bool) -> dict[str, Any]:
    """``summary`` with ``goals_judged`` first; without its ``goal_*`` flags when
    the run did not follow the goals' protocol (``--quick``, fewer seeds), since a
    pass there says nothing of the goal.
    """
    kept = {k: v for k, v in summary.items() if judged or not k.startswith("goal_")}
    return {"goals_judged": judged, **kept}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def plain(value: Any) -> Any:
    """``value`` with every typed value (``to_json``) replaced by its numbers."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render rows (dicts sharing keys) as a Markdown table."""
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_result(result: BenchmarkResult, out_dir: Path, seconds: float) -> str:
    """Write results.json and results.md; return the Markdown text.

    The one writer of benchmark results: every suite returns a
    :class:`BenchmarkResult` and the command hands it here.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "suite": result.suite,
        "seconds": seconds,
        "summary": result.summary,
        "rows": result.rows,
        "notes": result.notes,
        "plots": result.plots,
        "details": result.details,
    }
    clash = set(result.sections) & set(payload)
    if clash:
        raise ValueError(f"benchmark sections {sorted(clash)} clash with results keys")
    payload.update(result.sections)
    write_json(out_dir / "results.json", plain(payload))
    text = f"# Benchmark: {result.suite}\n\n" + markdown_table(result.rows)
    if result.summary:
        text += "\n" + "\n".join(f"- {k}: {_fmt(v)}" for k, v in result.summary.items())
        text += "\n"
    if result.notes:
        text += "\n" + "\n".join(f"> {n}" for n in result.notes) + "\n"
    text += f"\n({seconds:.1f} s)\n"
    (out_dir / "results.md").write_text(text)
    return text


class Progress:
    """What a running suite has finished, one line each on stderr.

    Suites run for minutes to an hour and print their table only at the end;
    each completed federated run, real ``flwr run`` or long baseline says so,
    with the time since the suite started.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()

    def restart(self) -> None:
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        print(f"[{elapsed:7.1f} s] {text}", file=sys.stderr, flush=True)


progress = Progress()

SuiteFn = Callable[[argparse.Namespace], BenchmarkResult]

# Suite name -> function, filled by ``@register`` as a suite's module is imported.
_FUNCTIONS: dict[str, SuiteFn] = {}


def register(name: str) -> Callable[[SuiteFn], SuiteFn]:
    """Decorator naming the function of suite ``name`` (declared in ``SUITES``)."""
    if name not in SUITES:
        raise KeyError(f"benchmark suite {name!r} is not declared in SUITES")

    def wrap(fn: SuiteFn) -> SuiteFn:
        _FUNCTIONS[name] = fn
        return fn

    return wrap


def suite_function(name: str) -> SuiteFn:
    """The function of suite ``name``, importing its module on first use."""
    module, _ = SUITES[name]
    importlib.import_module(module)
    if name not in _FUNCTIONS:
        raise LookupError(f"{module} does not register benchmark suite {name!r}")
    return _FUNCTIONS[name]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run a benchmark suite and print its table."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    width = max(len(name) for name in SUITES)
    parser.epilog = "suites:\n" + "\n".join(
        f"  {name:<{width}}  {description}" for name, (_, description) in SUITES.items()
    )
    parser.add_argument("suite", choices=list(SUITES))
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder with the real data (default: <repo>/../shared/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: outputs/benchmarks/<suite>)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=42,
        help="imaging: the first seed of --seeds consecutive ones (default 42)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller, faster settings")
    parser.add_argument(
        "--personalized",
        action="store_true",
        help="imaging: personalised FL methods, per hospital (a short budget)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="recommendation: an interactions file (MovieLens u.data format too); "
        "imaging: a MedMNIST-format .npz (default: BreastMNIST)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="imaging: the run-config preset to benchmark (default imaging-2d; "
        "app/config/presets/)",
    )
    parser.add_argument(
        "--sites",
        type=int,
        default=None,
        help="recommendation with --data: hospitals to split the users over (10)",
    )
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="scale: also time a hospital's messages in a loopback deployment",
    )
    parser.add_argument(
        "--hospitals",
        type=hospital_counts,
        default=None,
        help="scale: federation sizes, e.g. 10,100,1000 (default 10,50,100)",
    )
    parser.add_argument(
        "--repeats",
        type=repeat_count,
        default=None,
        help="scale: runs of each app per size, medians reported (default 3 up to "
        "100 hospitals, 1 above)",
    )


def repeat_count(text: str) -> int:
    """Parse ``--repeats``: a whole number of runs, at least 1."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"--repeats takes a whole number of runs >= 1, got {text!r}"
        )
    return count


def hospital_counts(text: str) -> tuple[int, ...]:
    """Parse ``--hospitals`` ("10,100,1000") into positive federation sizes."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hospitals takes comma-separated integers, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(
            f"--hospitals: every size must be at least 2, got {text!r}"
        )
    return sizes


def default_data_root(args: argparse.Namespace) -> Path:
    return args.data_root or project_root().parent / "shared" / "data"


def suite_dir(args: argparse.Namespace, suite: str) -> Path:
    """Where ``medflower benchmark`` writes this suite's files (plots go there too)."""
    out = (
        getattr(args, "out", None) or project_root() / "outputs" / "benchmarks" / suite
    )
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(args: argparse.Namespace) -> int:
    fn = suite_function(args.suite)
    start = time.monotonic()
    progress.restart()
    result = fn(args)
    out_dir = suite_dir(args, args.suite)
    text = write_result(result, out_dir, time.monotonic() - start)
    print(text)
    print(f"written to {out_dir}")
    return 0
