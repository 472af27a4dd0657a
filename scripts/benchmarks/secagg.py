"""``medflower benchmark secagg``: secure aggregation against plain FedAvg.

Wall time and accuracy on the same federation (in-process, wire serialisation on,
through :func:`scripts.benchmarks.federation.federate`).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from scripts.benchmarks.core import BenchmarkResult, default_data_root, register
from scripts.benchmarks.federation import federate


def _modes() -> dict[str, dict[str, Any]]:
    modes: dict[str, dict[str, Any]] = {
        "plain": {"secure-aggregation": False},
        "secagg+": {"secure-aggregation": True},
    }
    try:
        import tenseal  # noqa: F401
    except ImportError:
        pass
    else:
        modes["ckks"] = {"secure-aggregation": True, "aggregation-encryption": "ckks"}
    return modes


def _federations(args: argparse.Namespace) -> list[tuple[str, int, dict[str, Any]]]:
    feds: list[tuple[str, int, dict[str, Any]]] = [("wdbc", 4, {"dataset": "wdbc"})]
    heart = default_data_root(args) / "heart-disease"
    if (heart / "processed.cleveland.data").is_file():
        feds.append(
            ("heart-disease", 4, {"dataset": "heart-disease", "data-path": str(heart)})
        )
    return feds


def _run(overrides: dict[str, Any], hospitals: int) -> dict[str, Any]:
    run = federate({"server-eval": True, **overrides}, hospitals)
    final = run.rounds[-1]
    rounds = overrides["num-server-rounds"]
    return {
        "seconds": run.seconds,
        "accuracy": final.server.get("accuracy", float("nan")),
        "auc": final.server.get("auc", float("nan")),
        "failed_rounds": len(run.history.skipped_rounds()),
        "kb_up_per_hospital_round": sum(run.grid.bytes_per_node("up").values())
        / hospitals
        / rounds
        / 1024,
    }


def federation_rows(
    fed: str, hospitals: int, data: dict[str, Any], *, rounds: int, repeats: int
) -> list[dict[str, Any]]:
    """One row per mode on federation ``fed``: median wall time over ``repeats``."""
    base = {"num-server-rounds": rounds, **data}
    _run({**base, "num-server-rounds": 1}, hospitals)  # warm-up
    per_mode: dict[str, list[dict[str, Any]]] = {m: [] for m in _modes()}
    for _ in range(repeats):
        for mode, extra in _modes().items():
            per_mode[mode].append(_run({**base, **extra}, hospitals))
    plain_time = statistics.median(r["seconds"] for r in per_mode["plain"])
    plain_acc = per_mode["plain"][0]["accuracy"]
    rows = []
    for mode, runs in per_mode.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        rows.append(
            {
                "federation": f"{fed} ({hospitals} hospitals, {rounds} rounds)",
                "mode": mode,
                "median_seconds": seconds,
                "time_ratio_vs_plain": seconds / plain_time,
                "accuracy": runs[0]["accuracy"],
                "accuracy_diff_points": 100 * (runs[0]["accuracy"] - plain_acc),
                "auc": runs[0]["auc"],
                "kb_up_per_hospital_round": runs[0]["kb_up_per_hospital_round"],
                "failed_rounds": runs[0]["failed_rounds"],
            }
        )
    return rows


@register("secagg")
def secagg_suite(args: argparse.Namespace) -> BenchmarkResult:
    """Median wall time over ``--seeds`` repetitions per mode; ratio secure / plain."""
    rounds = 3 if args.quick else 5
    repeats = args.seeds or (1 if args.quick else 3)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for fed, hospitals, data in _federations(args):
        fed_rows = federation_rows(fed, hospitals, data, rounds=rounds, repeats=repeats)
        rows += fed_rows
        for row in fed_rows:
            if row["mode"] != "plain":
                summary[f"{fed}: wall-time ratio {row['mode']} / plain"] = row[
                    "time_ratio_vs_plain"
                ]
    return BenchmarkResult(
        "secagg",
        rows,
        summary,
        notes=[
            "In-process federation: every message is serialised as on the wire, but "
            "hospitals run one after another on this machine, so per-hospital crypto "
            "adds up; in a deployment hospitals mask in parallel.",
            f"median of {repeats} repetition(s) per mode after one warm-up run",
        ],
    )
