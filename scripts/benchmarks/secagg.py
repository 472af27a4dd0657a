"""``medflower benchmark secagg``: secure aggregation against plain FedAvg.

Wall time and accuracy on the same federation (in-process, wire serialisation on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.client_app import app as client_app
from app.server_app import app as server_app
from scripts.benchmarks.core import BenchmarkResult, default_data_root, register
from scripts.harness.inprocess import full_run_config, run_inprocess


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


def _run(overrides: dict[str, Any], hospitals: int, out: Path) -> dict[str, Any]:
    config = full_run_config(
        **{
            "output-dir": str(out),
            "run-name": "bench",
            "server-eval": True,
            **overrides,
        }
    )
    start = time.perf_counter()
    grid = run_inprocess(
        server_app, client_app, num_hospitals=hospitals, run_config=config
    )
    seconds = time.perf_counter() - start
    history = json.loads((out / "bench" / "history.json").read_text())
    final = history["rounds"][-1]
    rounds = overrides["num-server-rounds"]
    return {
        "seconds": seconds,
        "accuracy": final["server"].get("accuracy", float("nan")),
        "auc": final["server"].get("auc", float("nan")),
        "failed_rounds": sum(1 for r in history["rounds"] if "failed" in r),
        "kb_up_per_hospital_round": sum(grid.bytes_per_node("up").values())
        / hospitals
        / rounds
        / 1024,
    }


@register(
    "secagg", "secure aggregation (SecAgg+, CKKS) vs plain FedAvg: time, accuracy"
)
def secagg_suite(args: argparse.Namespace) -> BenchmarkResult:
    """Median wall time over ``--seeds`` repetitions per mode; ratio secure / plain."""
    rounds = 3 if args.quick else 5
    repeats = args.seeds or (1 if args.quick else 3)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fed, hospitals, data in _federations(args):
            base = {"num-server-rounds": rounds, **data}
            _run({**base, "num-server-rounds": 1}, hospitals, Path(tmp) / "warm")
            per_mode: dict[str, list[dict[str, Any]]] = {m: [] for m in _modes()}
            for rep in range(repeats):
                for mode, extra in _modes().items():
                    out = Path(tmp) / f"{fed}-{mode}-{rep}"
                    per_mode[mode].append(_run({**base, **extra}, hospitals, out))
            plain_time = statistics.median(r["seconds"] for r in per_mode["plain"])
            plain_acc = per_mode["plain"][0]["accuracy"]
            for mode, runs in per_mode.items():
                seconds = statistics.median(r["seconds"] for r in runs)
                row = {
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
                rows.append(row)
                if mode != "plain":
                    summary[f"{fed}: wall-time ratio {mode} / plain"] = (
                        seconds / plain_time
                    )
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
