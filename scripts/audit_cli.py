"""Arguments of ``medflower audit``; the work is done in :mod:`scripts.audit`.

Kept apart so that ``medflower audit --help`` imports no torch, MONAI or Flower.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ATTACKS = ("loss", "shadow")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Membership-inference audit of a saved final_model.pt."
    parser.add_argument("--model", required=True, type=Path, help="a final_model.pt")
    parser.add_argument(
        "--data",
        default=None,
        help="dataset of the run: 'wdbc' or a heart-disease directory "
        "(default: the one recorded in the model file)",
    )
    parser.add_argument(
        "--hospitals",
        type=int,
        default=None,
        help="hospitals in the federation (default: number of "
        "heart-disease files, else 4)",
    )
    parser.add_argument(
        "--hospital",
        default="all",
        help="audit one hospital (index or name) or 'all' (default)",
    )
    parser.add_argument(
        "--attack",
        choices=ATTACKS,
        default="loss",
        help="loss: loss/confidence thresholds (default); shadow: shadow models",
    )
    parser.add_argument(
        "--shadow-models", type=int, default=4, help="--attack shadow: how many"
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from scripts.audit import run as audit

    return audit(args)
