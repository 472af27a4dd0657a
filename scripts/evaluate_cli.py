"""Arguments of ``medflower evaluate``; the work is done in :mod:`scripts.evaluate`.

Kept apart so that ``medflower evaluate --help`` imports no torch, MONAI or Flower.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a saved final_model.pt on held-out data (binary models: also at "
        "the decision threshold stored with the model and at 0.5)."
    )
    parser.add_argument("--model", required=True, type=Path, help="a final_model.pt")
    parser.add_argument(
        "--data",
        default=None,
        help="tabular: 'wdbc', a heart-disease directory or a CSV file; imaging: a "
        "MedMNIST .npz, a root/<class>/<images> folder or 'synthetic-lesions'. "
        "With --per-site: overrides the run's data-path (optional).",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        default="test",
        help="npz: which split (default test); other data: the held-out test split "
        "(test) or every record (all; CSV and image folders)",
    )
    parser.add_argument("--label-column", default=None, help="label column of a CSV")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write report.json and ROC/confusion/calibration PNGs here",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the report here"
    )
    parser.add_argument(
        "--per-site",
        action="store_true",
        help="evaluate on each hospital's held-out split of the run",
    )
    parser.add_argument(
        "--hospitals",
        type=int,
        default=None,
        help="--per-site: number of hospitals (default: from the run's "
        "history.json beside the model)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for the 95%% CIs (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    # Checked before the heavy import below (~10 s of torch and MONAI).
    problem = None
    if not args.data and not args.per_site:
        problem = "--data is required (unless --per-site)."
    elif not args.model.is_file():
        problem = f"model file not found: {args.model}"
    if problem:
        print(f"medflower evaluate: {problem}", file=sys.stderr)
        return 2
    from scripts.evaluate import run as evaluate

    return evaluate(args)
