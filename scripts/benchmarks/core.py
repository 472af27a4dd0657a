"""``medflower benchmark <suite>``: measured comparisons that print their numbers.

Each suite is a function ``(args) -> BenchmarkResult`` registered in ``BENCHMARKS``;
this module writes ``outputs/benchmarks/<suite>/results.json`` and ``results.md``
and prints the table. Adding a suite is one function plus one registry line.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jsonio import write_json
from scripts.flower_env import project_root


@dataclass
class BenchmarkResult:
    """A suite's table (rows of equal keys), headline figures and notes."""

    suite: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # results.json only


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


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
    """Write results.json and results.md; return the Markdown text."""
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
    write_json(out_dir / "results.json", payload)
    text = f"# Benchmark: {result.suite}\n\n" + markdown_table(result.rows)
    if result.summary:
        text += "\n" + "\n".join(f"- {k}: {_fmt(v)}" for k, v in result.summary.items())
        text += "\n"
    if result.notes:
        text += "\n" + "\n".join(f"> {n}" for n in result.notes) + "\n"
    text += f"\n({seconds:.1f} s)\n"
    (out_dir / "results.md").write_text(text)
    return text


SuiteFn = Callable[[argparse.Namespace], BenchmarkResult]

# Suite name -> (description, function). Suites register themselves here.
BENCHMARKS: dict[str, tuple[str, SuiteFn]] = {}


def register(name: str, description: str) -> Callable[[SuiteFn], SuiteFn]:
    """Decorator adding a suite to ``BENCHMARKS``."""

    def wrap(fn: SuiteFn) -> SuiteFn:
        BENCHMARKS[name] = (description, fn)
        return fn

    return wrap


def _load_suites() -> None:
    """Import the modules that define suites (each registers itself)."""
    import importlib

    for module in SUITE_MODULES:
        importlib.import_module(module)


# Modules holding suites; one line per module.
SUITE_MODULES: list[str] = [
    "scripts.benchmarks.vertical",
    "scripts.benchmarks.personalization",
    "scripts.benchmarks.poisoning",
    "scripts.benchmarks.secagg",
    "scripts.benchmarks.privacy",
    "scripts.benchmarks.dp_step",
    "scripts.benchmarks.suites",
    "scripts.benchmarks.imaging",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _load_suites()
    parser.description = "Run a benchmark suite and print its table."
    parser.add_argument("suite", choices=sorted(BENCHMARKS))
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


def default_data_root(args: argparse.Namespace) -> Path:
    return args.data_root or project_root().parent / "shared" / "data"


def run(args: argparse.Namespace) -> int:
    _, fn = BENCHMARKS[args.suite]
    start = time.monotonic()
    result = fn(args)
    out_dir = args.out or project_root() / "outputs" / "benchmarks" / args.suite
    text = write_result(result, out_dir, time.monotonic() - start)
    print(text)
    print(f"written to {out_dir}")
    return 0
