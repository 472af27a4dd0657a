"""``medflower benchmark <name>``: reproducible experiments run in-process.

``BENCHMARKS`` maps a name to (register arguments, run). Each benchmark drives the
real ServerApp and ClientApp through :class:`app.inprocess.InProcessGrid` (no Ray,
no SuperLink), prints a table and writes ``results.json`` and ``results.md`` under
``outputs/benchmarks/<name>/``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.flower_env import project_root

Benchmark = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _final_accuracy(run_dir: Path) -> float:
    history = json.loads((run_dir / "history.json").read_text())
    if history["status"] != "completed":
        raise RuntimeError(f"{run_dir}: run ended with status {history['status']}")
    return float(history["final_server_metrics"]["accuracy"])


def _poisoning_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="wdbc", choices=("wdbc", "heart-disease"))
    parser.add_argument("--data-path", default="", help="heart-disease directory")
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--poison-fraction", type=float, default=0.2)
    parser.add_argument("--poison-scale", type=float, default=10.0)
    parser.add_argument("--tolerance", type=float, default=2.0,
                        help="goal: robust strategies within this many accuracy points")
    parser.add_argument(
        "--strategies", default="fedavg,fedmedian,fedtrimmedavg,krum,multikrum",
        help="comma-separated strategy names",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default: <repo>/outputs/benchmarks/poisoning")


def _poisoning(args: argparse.Namespace) -> int:
    """Final accuracy of each strategy, clean and with poisoning hospitals."""
    import torch

    from app.client_app import app as client_app
    from app.inprocess import full_run_config, run_inprocess
    from app.server_app import app as server_app

    torch.set_num_threads(1)
    out = (args.output_dir or project_root() / "outputs" / "benchmarks" / "poisoning").resolve()
    poisoners = int(round(args.poison_fraction * args.hospitals))
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    for strategy in strategies:
        row: dict[str, Any] = {"strategy": strategy}
        for label, fraction in (("clean", 0.0), ("poisoned", args.poison_fraction)):
            name = f"{strategy}-{label}"
            config = full_run_config(**{
                "dataset": args.dataset, "data-path": args.data_path,
                "strategy": strategy, "num-server-rounds": args.rounds,
                "seed": args.seed, "deterministic": True,
                # Only the server-side test accuracy is reported: skip client eval.
                "fraction-evaluate": 0.0,
                "poison-fraction": fraction, "poison-scale": args.poison_scale,
                # Robust settings sized for the poisoners the run may contain.
                "num-malicious": poisoners, "trim-beta": args.poison_fraction,
                "output-dir": str(out / "runs"), "run-name": name,
            })
            started = time.monotonic()
            run_inprocess(server_app, client_app, num_hospitals=args.hospitals,
                          run_config=config)
            row[label] = _final_accuracy(out / "runs" / name)
            row[f"{label}_seconds"] = round(time.monotonic() - started, 1)
        row["drop_points"] = 100 * (row["clean"] - row["poisoned"])
        row["within_tolerance"] = row["drop_points"] <= args.tolerance
        rows.append(row)
        print(f"  {strategy}: clean {row['clean']:.4f}, poisoned {row['poisoned']:.4f}",
              flush=True)
    header = (
        f"Poisoning benchmark: {args.dataset}, {args.hospitals} hospitals, {args.rounds} "
        f"rounds, {poisoners} poisoning hospital(s) ({args.poison_fraction:.0%}) sending "
        f"sign-flipped x{args.poison_scale:g} updates; final server-side test accuracy."
    )
    lines = [
        header, "",
        "| strategy | clean | poisoned | drop (points) | within "
        f"{args.tolerance:g} pts |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['clean']:.4f} | {r['poisoned']:.4f} | "
            f"{r['drop_points']:+.1f} | {'yes' if r['within_tolerance'] else 'no'} |"
        )
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("func",)}
    (out / "results.json").write_text(json.dumps(
        {"settings": settings, "poisoning_hospitals": poisoners, "rows": rows}, indent=2
    ) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"medflower: results in {out}")
    return 0


BENCHMARKS: dict[str, Benchmark] = {
    "poisoning": (_poisoning_arguments, _poisoning),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run a named benchmark in-process and write its results."
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (register, _) in BENCHMARKS.items():
        register(sub.add_parser(name))


def run(args: argparse.Namespace) -> int:
    return BENCHMARKS[args.benchmark][1](args)
