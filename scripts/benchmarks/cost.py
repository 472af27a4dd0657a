"""Benchmark suite ``cost`` (``medflower benchmark cost``): what federation costs.

Simulation against centralized wall time, DP-SGD against plain step time, bytes per
hospital per round against the model's size, and update encodings; federated runs
in process (:func:`scripts.benchmarks.federation.federate`) and as a real
``flwr run`` simulation.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from app.client.hospital import model_spec, train_settings
from app.config import RunConfig
from app.server.history import RunHistory, read_history
from data.registry import get_dataset
from models.training import evaluate_split, make_loader, train_epochs
from scripts.benchmarks.core import (
    BenchmarkResult,
    default_data_root,
    progress,
    register,
    suite_dir,
)
from scripts.benchmarks.dp_step import StepCase, step_times
from scripts.benchmarks.encoding import WORKLOADS as ENCODING_WORKLOADS
from scripts.benchmarks.encoding import encoding_comparison
from scripts.benchmarks.federation import (
    CPU,
    FederatedRun,
    federate,
    initial_model,
    pool,
)
from scripts.benchmarks.reporting import save_figure
from scripts.flower.env import project_root
from scripts.flower.run_config import flower_run_config
from scripts.harness.inprocess import InProcessGrid, full_run_config

# Workloads of the cost suite: run-config overrides (data paths filled in later),
# the same as the encoding comparison's: BreastMNIST across 10 hospitals with the
# default imaging model (no augmentation, so centralized and federated do exactly
# the same work per epoch), and wdbc with logistic regression.
COST_WORKLOADS: dict[str, dict[str, Any]] = {
    "imaging": ENCODING_WORKLOADS["breastmnist"],
    "tabular": ENCODING_WORKLOADS["wdbc"],
}
COST_HOSPITALS = 10


def cost_workload(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Pick the imaging workload when BreastMNIST is present, else the tabular one."""
    npz = default_data_root(args) / "medmnist" / "breastmnist.npz"
    if npz.is_file():
        return "imaging", {**COST_WORKLOADS["imaging"], "data-path": str(npz)}
    return "tabular", dict(COST_WORKLOADS["tabular"])


def centralized_timing(
    cfg: RunConfig, num_hospitals: int
) -> tuple[float, torch.nn.Module]:
    """Time centralized training of ``rounds x local-epochs`` epochs.

    Trains on the pooled training data of the same hospitals, evaluating on the
    server's test set every ``local-epochs`` epochs (as the ServerApp does after
    each round). Data loading is not timed.
    """
    dataset = get_dataset(cfg.data_spec())
    sites = [dataset.hospital(i, num_hospitals) for i in range(num_hospitals)]
    train = pool([s.train for s in sites])
    test = dataset.server_test() if cfg.server_eval else None
    model = initial_model(model_spec(cfg, sites[0].info), cfg.seed)
    start = time.perf_counter()
    for r in range(cfg.num_server_rounds):
        loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed + r)
        train_epochs(model, loader, train_settings(cfg, max_steps=0), CPU)
        if test is not None:
            evaluate_split(model, test, CPU)
    return time.perf_counter() - start, model


def model_float32_bytes(model: torch.nn.Module) -> int:
    """Size of every state_dict entry stored as float32."""
    return sum(4 * t.numel() for t in model.state_dict().values())


def traffic_per_round(
    grid: InProcessGrid, direction: str, kind: str = "train"
) -> float:
    """Mean bytes of one ``kind`` message per hospital per round in ``direction``."""
    sizes = [
        t.num_bytes
        for t in grid.traffic
        if t.direction == direction and t.message_type == kind
    ]
    return float(np.mean(sizes)) if sizes else math.nan


def sent_dtypes(grid: InProcessGrid) -> list[str]:
    """Array dtypes of the global model as the server sent it."""
    seen: set[str] = set()
    for msg in grid.delivered:
        if "arrays" in msg.content.array_records:
            seen |= {a.dtype for a in msg.content["arrays"].values()}
    return sorted(seen)


@register("cost")
def cost(args: argparse.Namespace) -> BenchmarkResult:
    torch.set_num_threads(1)
    quick = bool(getattr(args, "quick", False))
    workload, overrides = cost_workload(args)
    rounds, epochs = (2, 1) if quick else (3, 2)
    config = {
        **overrides,
        "num-server-rounds": rounds,
        "local-epochs": epochs,
        "fraction-evaluate": 0.0,
        "seed": 0,
    }
    cfg = RunConfig.from_run_config(full_run_config(**config))
    central_s, model = centralized_timing(cfg, COST_HOSPITALS)
    run = federate(config, COST_HOSPITALS)
    fed_rounds = [r.elapsed_s for r in run.rounds]
    size = model_float32_bytes(model)
    rows, traffic = cost_traffic(run, central_s, size, rounds=rounds, epochs=epochs)
    summary: dict[str, Any] = {
        "workload": workload,
        "hospitals": COST_HOSPITALS,
        "model": cfg.model_name,
        **traffic,
    }
    if not quick:
        sim = flwr_run_timing(config, COST_HOSPITALS)
        rows.insert(1, cost_flwr_row(sim, central_s))
        summary.update(sim)
        summary["time_ratio_flwr_run"] = sim["flwr_run_s"] / central_s
        summary["time_ratio_flwr_rounds"] = sim["flwr_rounds_s"] / central_s
    dp_row, dp_summary = cost_dp_step(cfg, steps=10 if quick else 30)
    rows.append(dp_row)
    summary.update(dp_summary)
    settings = {k: config[k] for k in ("num-server-rounds", "local-epochs", "seed")}
    enc_rows, enc_summary, enc_details = encoding_comparison(
        args, {**settings, "fraction-evaluate": 0.0}, hospitals=COST_HOSPITALS
    )
    rows += enc_rows
    summary.update(enc_summary)
    out_dir = suite_dir(args, "cost")
    plots = [
        _cost_plot(
            out_dir, central_s, run.seconds, fed_rounds, summary.get("flwr_run_s")
        )
    ]
    notes = [
        f"Workload '{workload}'. Centralized trains the pooled training data of the "
        f"same {COST_HOSPITALS} hospitals for the same epochs with the same training "
        "loop, and "
        "evaluates on the server's test set once per round, as the ServerApp does.",
        "Bytes are Flower protobuf messages as serialised on the wire (InProcessGrid); "
        "the upload carries the model in float32 plus the metric record and site name.",
        "update-encoding rows: each dataset federated once per encoding, same seed; "
        "bytes of every message both ways, accuracy of the final model on the "
        "server's test set (scripts/benchmarks/encoding.py).",
        "DP-SGD step measured with Opacus directly (make_private, hooks) on the "
        "workload's model; machine shared with other jobs, timings are noisy.",
    ]
    return BenchmarkResult(
        suite="cost",
        rows=rows,
        summary=summary,
        notes=notes,
        plots=plots,
        details={"encoding": enc_details},
    )


def cost_traffic(
    run: FederatedRun, central_s: float, size: int, *, rounds: int, epochs: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and summary of the in-process run: time and bytes against the model."""
    up = traffic_per_round(run.grid, "up")
    down = traffic_per_round(run.grid, "down")
    rows: list[dict[str, Any]] = [
        {
            "measure": "federated (in-process) / centralized wall time",
            "value": run.seconds / central_s,
            "goal": "<= 1.25",
            "detail": f"{run.seconds:.1f}s / {central_s:.1f}s; {COST_HOSPITALS} "
            "hospitals, "
            f"{rounds} rounds x {epochs} local epochs vs {rounds * epochs} epochs",
        },
        {
            "measure": "bytes up per hospital per round / model size (float32)",
            "value": up / size,
            "goal": "<= 1.0",
            "detail": f"{up:.0f} B / {size} B",
        },
        {
            "measure": "bytes down per hospital per round / model size (float32)",
            "value": down / size,
            "goal": "",
            "detail": f"{down:.0f} B / {size} B; dtypes {sent_dtypes(run.grid)}",
        },
    ]
    summary: dict[str, Any] = {
        "model_float32_bytes": size,
        "federated_inprocess_s": run.seconds,
        "centralized_s": central_s,
        "time_ratio_inprocess": run.seconds / central_s,
        "bytes_up_per_hospital_round": up,
        "bytes_ratio_up": up / size,
        "bytes_ratio_down": down / size,
    }
    return rows, summary


def cost_flwr_row(sim: Mapping[str, float], central_s: float) -> dict[str, Any]:
    """The row of the real ``flwr run`` simulation's wall time."""
    return {
        "measure": "federated (`flwr run`, Ray) / centralized wall time",
        "value": sim["flwr_run_s"] / central_s,
        "goal": "<= 1.25",
        "detail": f"{sim['flwr_run_s']:.1f}s whole command; rounds alone "
        f"{sim['flwr_rounds_s']:.1f}s "
        f"({sim['flwr_rounds_s'] / central_s:.2f}x)",
    }


def cost_dp_step(
    cfg: RunConfig, *, steps: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Row and summary of a DP-SGD step against a plain one on the workload's model."""
    info = get_dataset(cfg.data_spec()).info()
    case = StepCase(info.task, info.input_shape, info.num_classes, cfg.model_name)
    dp = step_times(case, batch_size=cfg.batch_size, steps=steps, device=CPU)
    row = {
        "measure": "DP-SGD step / plain step",
        "value": dp["ratio"],
        "goal": "",
        "detail": f"{dp['dp_step_s'] * 1e3:.1f} ms / {dp['plain_step_s'] * 1e3:.1f}"
        f" ms, per-sample gradients by layer, batch {cfg.batch_size}, "
        f"{cfg.model_name}",
    }
    summary = {
        "dp_step_ratio": dp["ratio"],
        "dp_step_s": dp["dp_step_s"],
        "plain_step_s": dp["plain_step_s"],
    }
    return row, summary


def _cost_plot(
    out_dir: Path,
    central_s: float,
    fed_s: float,
    fed_rounds: list[float],
    flwr_s: float | None,
) -> str:
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    labels = ["centralized", "federated\n(in-process)"]
    values = [central_s, fed_s]
    if flwr_s is not None:
        labels.append("federated\n(flwr run)")
        values.append(flwr_s)
    ax.barh(labels, values, color=["#777", "#1f77b4", "#ff7f0e"][: len(values)])
    ax.set_xlabel("wall time (s)")
    ax.set_title("same epochs, same data", fontsize=10)
    return save_figure(fig, out_dir, "cost-wall-time.png")


def timed_flwr_run(
    config: Mapping[str, Any],
    num_hospitals: int,
    monitor: contextlib.AbstractContextManager[Any] | None = None,
) -> tuple[float, RunHistory]:
    """Seconds of one real ``flwr run`` simulation (inside ``monitor``), its history.

    Raises RuntimeError with the run's log tail when it did not complete.
    """
    from scripts.flower.driver import run_simulation

    with tempfile.TemporaryDirectory(prefix="medflower-bench-") as tmp:
        run_config = flower_run_config({**config, "output-dir": tmp})
        start = time.perf_counter()
        with monitor or contextlib.nullcontext():
            outcome = run_simulation(
                app_dir=project_root(),
                num_hospitals=num_hospitals,
                run_config=run_config,
                echo=False,
            )
        total = time.perf_counter() - start
        progress(f"flwr run of medflower, {num_hospitals} hospitals, {total:.1f} s")
        if not outcome.ok:
            raise RuntimeError(
                f"flwr run with {num_hospitals} hospitals ended with "
                f"{outcome.status}:\n{outcome.log[-3000:]}"
            )
        return total, _history_of(Path(tmp), outcome.run_id)


def flwr_run_timing(config: Mapping[str, Any], num_hospitals: int) -> dict[str, float]:
    """Wall time of a real ``flwr run`` simulation and of its rounds alone."""
    total, history = timed_flwr_run({**config, "report": False}, num_hospitals)
    elapsed = [r.elapsed_s for r in history.rounds]
    return {"flwr_run_s": total, "flwr_rounds_s": elapsed[-1] - elapsed[0]}


def _history_of(output_dir: Path, run_id: str | None) -> RunHistory:
    from scripts.simulate import find_run_dir

    run_dir = find_run_dir(output_dir, run_id)
    if run_dir is None:
        raise RuntimeError(f"no run folder for Flower run {run_id} in {output_dir}")
    return read_history(run_dir)
