"""``medflower simulate``: a ``flwr run`` simulation with its final status checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts.flower_env import project_root, run_simulation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Simulate N hospitals with `flwr run --stream` and check the run."
    parser.add_argument("--hospitals", type=int, default=4, help="simulated hospitals (default 4)")
    parser.add_argument("--run-config", default="", help='e.g. "num-server-rounds=3 strategy=\'fedprox\'"')
    parser.add_argument("--cpus-per-hospital", type=int, default=1)
    parser.add_argument("--app", type=Path, default=project_root(), help="Flower app directory")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where runs are written (default: <repo>/outputs)")


def run(args: argparse.Namespace) -> int:
    if args.hospitals < 1:
        raise SystemExit("--hospitals must be >= 1")
    output_dir = (args.output_dir or project_root() / "outputs").resolve()
    run_config = args.run_config
    if "output-dir" not in run_config:
        run_config = f"{run_config} output-dir='{output_dir}'".strip()
    outcome = run_simulation(
        app_dir=args.app.resolve(),
        num_hospitals=args.hospitals,
        run_config=run_config,
        cpus_per_hospital=args.cpus_per_hospital,
    )
    if not outcome.ok:
        print(f"medflower: run {outcome.run_id} ended with status {outcome.status}")
        return 1
    print(f"medflower: run {outcome.run_id} completed; outputs in {output_dir / 'latest'}")
    return 0
