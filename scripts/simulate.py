"""``medflower simulate``: a ``flwr run`` simulation with its final status checked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.server.report import REPORT_NAME
from scripts.flower_env import project_root, run_simulation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Simulate N hospitals with `flwr run --stream` and check the run."
    )
    parser.add_argument(
        "--hospitals", type=int, default=4, help="simulated hospitals (default 4)"
    )
    parser.add_argument(
        "--run-config",
        default="",
        help="e.g. \"num-server-rounds=3 strategy='fedprox'\"",
    )
    parser.add_argument("--cpus-per-hospital", type=int, default=1)
    parser.add_argument(
        "--app", type=Path, default=project_root(), help="Flower app directory"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where runs are written (default: <repo>/outputs)",
    )


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
    run_dir = find_run_dir(output_dir, outcome.run_id) or output_dir / "latest"
    print(f"medflower: run {outcome.run_id} completed; outputs in {run_dir}")
    report = run_dir / REPORT_NAME
    if report.is_file():
        print(f"medflower: report: {report}")
    return 0


def find_run_dir(output_dir: Path, run_id: str | None) -> Path | None:
    """Find the run folder whose history.json names Flower run ``run_id``."""
    if run_id is None or not output_dir.is_dir():
        return None
    for history in output_dir.glob("*/history.json"):
        if history.parent.is_symlink():  # outputs/latest
            continue
        try:
            if str(json.loads(history.read_text()).get("flower_run_id")) == str(run_id):
                return history.parent
        except (OSError, json.JSONDecodeError):
            continue
    return None
