"""Benchmark suite ``poisoning``: robust aggregation against poisoning hospitals.

Runs the real ServerApp and ClientApp in-process
(:func:`scripts.benchmarks.federation.federate`) on WDBC
with 10 hospitals, once clean and once with 20% of the hospitals (the lowest
partition ids) sending sign-flipped, 10x-scaled updates
(:mod:`scripts.harness.poisoning`,
a simulation-only test harness), for FedAvg and each robust strategy.
Reported: final server-side test accuracy (mean over seeds) and its drop.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from scripts.benchmarks.core import (
    BenchmarkResult,
    Values,
    progress,
    register,
    suite_dir,
)
from scripts.benchmarks.federation import FederatedRun, federate

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum")
HOSPITALS = 10
POISON_FRACTION = 0.2
POISON_SCALE = 10.0
TOLERANCE_POINTS = 2.0
POISONERS = int(round(POISON_FRACTION * HOSPITALS))


def _flagged(run: FederatedRun) -> list[str]:
    """Hospitals the anomaly report flagged in the last round."""
    report = (run.rounds[-1].anomaly or {}).get("hospitals", {})
    return sorted(name for name, row in report.items() if row["flagged"])


def poisoning_run(
    strategy: str, fraction: float, *, rounds: int, seed: int, out: Path, name: str
) -> FederatedRun:
    """One WDBC federation of ``strategy`` with ``fraction`` poisoning hospitals."""
    config = {
        "dataset": "wdbc",
        "strategy": strategy,
        "num-server-rounds": rounds,
        "seed": seed,
        "deterministic": True,
        "poison-fraction": fraction,
        "poison-scale": POISON_SCALE,
        # Robust settings sized for the poisoners a run may hold.
        "num-malicious": POISONERS,
        "trim-beta": POISON_FRACTION,
        # Only server-side test accuracy is reported.
        "fraction-evaluate": 0.0,
    }
    return federate(config, HOSPITALS, out_dir=out, name=name)


def strategy_row(
    strategy: str, *, rounds: int, seeds: list[int], out: Path
) -> dict[str, Any]:
    """Clean and poisoned accuracy of ``strategy`` (mean over seeds) and the drop."""
    accuracy: dict[str, list[float]] = {"clean": [], "poisoned": []}
    flagged: list[str] = []
    for seed in seeds:
        for label, fraction in (("clean", 0.0), ("poisoned", POISON_FRACTION)):
            run = poisoning_run(
                strategy,
                fraction,
                rounds=rounds,
                seed=seed,
                out=out,
                name=f"{strategy}-{label}-seed{seed}",
            )
            accuracy[label].append(float(run.final_metrics["accuracy"]))
            if label == "poisoned":
                flagged = _flagged(run)
    clean = statistics.mean(accuracy["clean"])
    poisoned = statistics.mean(accuracy["poisoned"])
    drop = 100 * (clean - poisoned)
    return {
        "strategy": strategy,
        "robust": strategy != "fedavg",
        "clean_accuracy": clean,
        "poisoned_accuracy": poisoned,
        "drop_points": round(drop, 2),
        f"within_{TOLERANCE_POINTS:g}_points": drop <= TOLERANCE_POINTS,
        "flagged_last_round": Values(tuple(flagged), fmt="", sep=","),
    }


@register("poisoning")
def poisoning(args: argparse.Namespace) -> BenchmarkResult:
    torch.set_num_threads(1)
    rounds = 5 if args.quick else 10
    seeds = [42 + i for i in range(args.seeds or 1)]
    out = suite_dir(args, "poisoning") / "runs"
    rows: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        rows.append(strategy_row(strategy, rounds=rounds, seeds=seeds, out=out))
        clean, poisoned = rows[-1]["clean_accuracy"], rows[-1]["poisoned_accuracy"]
        progress(f"poisoning: {strategy}: clean {clean:.4f}, poisoned {poisoned:.4f}")
    robust = [r for r in rows if r["robust"]]
    return BenchmarkResult(
        suite="poisoning",
        rows=rows,
        summary={
            "hospitals": HOSPITALS,
            "poisoning_hospitals": POISONERS,
            "rounds": rounds,
            "seeds": len(seeds),
            "robust_within_tolerance": all(
                r[f"within_{TOLERANCE_POINTS:g}_points"] for r in robust
            ),
        },
        notes=[
            f"WDBC, {HOSPITALS} IID hospitals, logistic regression, {rounds} rounds; "
            f"hospitals 0..{POISONERS - 1} send w_global - {POISON_SCALE:g} x "
            "(w_local - w_global) (sign-flipped, scaled).",
            "Krum/MultiKrum use num-malicious = number of poisoners; FedTrimmedAvg "
            "trims the poisoned fraction at each end; MultiKrum keeps n - f.",
            "Goal: robust strategies within 2 accuracy points of their clean run.",
        ],
    )
