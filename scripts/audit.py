"""``medflower audit``: membership-inference attacks on a saved model.

Members are a hospital's training records, non-members its held-out records (never
trained on). Run it where those records are (at the hospital): it prints only
attack metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.config import RunConfig
from data.registry import get_dataset
from data.spec import HospitalData
from models.checkpoint import load_model
from models.membership import AttackResult, audit_model
from models.training import pick_device


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
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--device", default="auto")


def audit_sites(
    cfg: RunConfig, model: Any, sites: list[HospitalData], device: Any
) -> dict[str, list[AttackResult]]:
    """Attack results per hospital (members: its train split; others: its held-out)."""
    return {
        site.name: audit_model(model, site.train, site.val, device) for site in sites
    }


def load_sites(cfg: RunConfig, hospitals: int | None, which: str) -> list[HospitalData]:
    dataset = get_dataset(cfg.data_spec())
    count = hospitals
    if count is None:
        count = len(dataset.hospital_names(0)) if cfg.dataset == "heart-disease" else 4
    sites = [dataset.hospital(i, count) for i in range(count)]
    if which == "all":
        return sites
    chosen = [s for i, s in enumerate(sites) if which in (str(i), s.name)]
    if not chosen:
        names = ", ".join(s.name for s in sites)
        raise SystemExit(f"--hospital {which!r}: not an index or one of {names}")
    return chosen


def run(args: argparse.Namespace) -> int:
    model, payload = load_model(args.model)
    cfg = RunConfig.from_run_config(payload["run_config"])
    if args.data == "wdbc":
        cfg = cfg.replace(dataset="wdbc", data_path="")
    elif args.data:
        cfg = cfg.replace(dataset="heart-disease", data_path=str(Path(args.data)))
    sites = load_sites(cfg, args.hospitals, args.hospital)
    results = audit_sites(cfg, model, sites, pick_device(args.device))
    report = {
        "model": str(args.model),
        "dp": cfg.dp,
        "hospitals": {
            name: {r.attack: r.to_dict() for r in res} for name, res in results.items()
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Membership-inference audit of {args.model} (dp={cfg.dp})")
    print(
        f"{'hospital':<14}{'attack':<12}{'AUC':>7}{'TPR@1%FPR':>11}{'members':>9}"
        f"{'non-mem.':>9}"
    )
    for name, res in results.items():
        for r in res:
            print(
                f"{name:<14}{r.attack:<12}{r.auc:>7.3f}{r.tpr_at_1pct_fpr:>11.3f}"
                f"{r.members:>9}{r.non_members:>9}"
            )
    print("AUC 0.5 means the attack cannot tell members from non-members.")
    return 0
