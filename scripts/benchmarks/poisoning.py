"""Benchmark suite ``poisoning``: robust aggregation against poisoning hospitals.

Runs the real ServerApp and ClientApp in-process
(:mod:`scripts.harness.inprocess`) on WDBC
with 10 hospitals, once clean and once with 20% of the hospitals (the lowest
partition ids) sending sign-flipped, 10x-scaled updates
(:mod:`scripts.harness.poisoning`,
a simulation-only test harness), for FedAvg and each robust strategy.
Reported: final server-side test accuracy (mean over seeds) and its drop.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from scripts.benchmarks.core import BenchmarkResult, register
from scripts.flower_env import project_root

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum")
HOSPITALS = 10
POISON_FRACTION = 0.2
POISON_SCALE = 10.0
TOLERANCE_POINTS = 2.0


def _final_accuracy(run_dir: Path) -> float:
    history = json.loads((run_dir / "history.json").read_text())
    if history["status"] != "completed":
        raise RuntimeError(f"{run_dir}: run ended with status {history['status']}")
    return float(history["final_server_metrics"]["accuracy"])


def _flagged(run_dir: Path) -> list[str]:
    """Hospitals the anomaly report flagged in the last round."""
    history = json.loads((run_dir / "history.json").read_text())
    report = history["rounds"][-1].get("anomaly", {}).get("hospitals", {})
    return sorted(name for name, row in report.items() if row["flagged"])


@register("poisoning", "FedAvg vs robust strategies, clean and 20% poisoning hospitals")
def poisoning(args: argparse.Namespace) -> BenchmarkResult:
    import torch

    from app.client_app import app as client_app
    from app.server_app import app as server_app
    from scripts.harness.inprocess import full_run_config, run_inprocess

    torch.set_num_threads(1)
    rounds = 5 if args.quick else 10
    seeds = [42 + i for i in range(args.seeds or 1)]
    out = args.out or project_root() / "outputs" / "benchmarks" / "poisoning"
    poisoners = int(round(POISON_FRACTION * HOSPITALS))
    rows: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        accuracy: dict[str, list[float]] = {"clean": [], "poisoned": []}
        flagged: list[str] = []
        for seed in seeds:
            for label, fraction in (("clean", 0.0), ("poisoned", POISON_FRACTION)):
                name = f"{strategy}-{label}-seed{seed}"
                config = full_run_config(
                    **{
                        "dataset": "wdbc",
                        "strategy": strategy,
                        "num-server-rounds": rounds,
                        "seed": seed,
                        "deterministic": True,
                        "poison-fraction": fraction,
                        "poison-scale": POISON_SCALE,
                        # Robust settings sized for the poisoners a run may hold.
                        "num-malicious": poisoners,
                        "trim-beta": POISON_FRACTION,
                        # Only server-side test accuracy is reported.
                        "fraction-evaluate": 0.0,
                        "output-dir": str(out / "runs"),
                        "run-name": name,
                    }
                )
                run_inprocess(
                    server_app, client_app, num_hospitals=HOSPITALS, run_config=config
                )
                accuracy[label].append(_final_accuracy(out / "runs" / name))
                if label == "poisoned":
                    flagged = _flagged(out / "runs" / name)
        clean = statistics.mean(accuracy["clean"])
        poisoned = statistics.mean(accuracy["poisoned"])
        drop = 100 * (clean - poisoned)
        rows.append(
            {
                "strategy": strategy,
                "robust": strategy != "fedavg",
                "clean_accuracy": clean,
                "poisoned_accuracy": poisoned,
                "drop_points": round(drop, 2),
                f"within_{TOLERANCE_POINTS:g}_points": drop <= TOLERANCE_POINTS,
                "flagged_last_round": ",".join(flagged) or "-",
            }
        )
        print(f"  {strategy}: clean {clean:.4f}, poisoned {poisoned:.4f}", flush=True)
    robust = [r for r in rows if r["robust"]]
    return BenchmarkResult(
        suite="poisoning",
        rows=rows,
        summary={
            "hospitals": HOSPITALS,
            "poisoning_hospitals": poisoners,
            "rounds": rounds,
            "seeds": len(seeds),
            "robust_within_tolerance": all(
                r[f"within_{TOLERANCE_POINTS:g}_points"] for r in robust
            ),
        },
        notes=[
            f"WDBC, {HOSPITALS} IID hospitals, logistic regression, {rounds} rounds; "
            f"hospitals 0..{poisoners - 1} send w_global - {POISON_SCALE:g} x "
            "(w_local - w_global) (sign-flipped, scaled).",
            "Krum/MultiKrum use num-malicious = number of poisoners; FedTrimmedAvg "
            "trims the poisoned fraction at each end; MultiKrum keeps n - f.",
            "Goal: robust strategies within 2 accuracy points of their clean run.",
        ],
    )
