"""Benchmark suites ``heart``, ``cost`` and ``scale`` (``medflower benchmark <suite>``).

Federated runs go through the real ServerApp and ClientApp: in-process with
:func:`scripts.benchmarks.federation.federate` (messages serialised as on the
wire, no Ray) for ``heart`` and ``cost``, and as real ``flwr run`` simulations for
``scale``. Baselines (pooled, local-only) reuse the same model, preprocessing,
optimiser and training loop (``models.training``) for the same number of epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import sklearn
import torch
from matplotlib.figure import Figure

from app.client.hospital import model_spec, train_settings
from app.config import RunConfig
from app.server.history import RunHistory, read_history
from data.registry import get_dataset
from data.spec import HospitalData, Split
from models.training import evaluate_split, make_loader, train_epochs
from scripts.benchmarks.core import (
    BenchmarkResult,
    MeanSD,
    default_data_root,
    judged_goals,
    register,
    suite_dir,
)
from scripts.benchmarks.deploy_cost import with_deploy
from scripts.benchmarks.dp_step import StepCase, step_times
from scripts.benchmarks.encoding import encoding_comparison
from scripts.benchmarks.federation import (
    CPU,
    FederatedRun,
    federate,
    local_only,
    pool,
    train_pooled,
)
from scripts.benchmarks.personalization import (
    HEART_GLOBAL_GOAL,
    HEART_GLOBAL_RECIPES,
    HEART_PERSONAL_GOAL,
    HEART_PERSONALISED,
    heart_personalised,
)
from scripts.flower.env import project_root
from scripts.harness.inprocess import InProcessGrid, full_run_config

# --------------------------------------------------------------------- helpers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of finite values."""
    arr = np.asarray([v for v in values if v == v], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def mean_sd(values: Sequence[float]) -> MeanSD:
    """:func:`mean_std` as a table cell (``mean ± sd``, three decimals)."""
    return MeanSD(*mean_std(values))


def save_figure(fig: Figure, out_dir: Path, name: str) -> str:
    """Save a figure as ``out_dir/name`` (PNG) and return the file name."""
    fig.savefig(out_dir / name, dpi=110)
    return name


# ----------------------------------------------------------------------- heart

HEART_METHODS = (
    "pooled",
    "local-only",
    "fedavg",
    "fedprox",
    "fedyogi",
    "fedavg+finetune",
    *HEART_GLOBAL_RECIPES,  # the best global recipe (public-bounds standardisation)
    *HEART_PERSONALISED,  # personalised FL (scripts/benchmarks/personalization.py)
)
# FLamby (du Terrail et al., NeurIPS 2022 Datasets and Benchmarks), Fed-Heart-Disease,
# accuracy on the pooled test set.
FLAMBY_ANCHORS = {"pooled": 0.795, "fedavg": 0.748, "fedyogi": 0.779}
HEART_GOAL = 0.80
# The goals hold for FLamby's protocol: the reported seeds 0-4 at full settings.
HEART_PROTOCOL_SEEDS = 5

# One setting for every method: same model, optimiser, batch size and total epochs
# (rounds x local epochs = pooled / local-only epochs). Picked on tuning seeds
# 1000-1002, disjoint from the reported seeds 0-4 (docs/benchmarks.md).
HEART_CONFIG: dict[str, Any] = {
    "dataset": "heart-disease",
    "model": "logreg",
    "test-fraction": 0.34,  # FLamby's 66/34 split per hospital
    "num-server-rounds": 20,
    "local-epochs": 1,
    "batch-size": 16,
    "optimizer": "sgd",
    "learning-rate": 0.05,
    "momentum": 0.9,
    "weight-decay": 0.0,
    "proximal-mu": 0.01,
    "eta": 0.01,
    "tau": 0.001,
    "fraction-evaluate": 0.0,  # final models are scored by the benchmark itself
}
FINETUNE_EPOCHS = 5
HEART_QUICK = {"num-server-rounds": 5}
# Federated rows: method -> run-config changes.
FEDERATED = {
    "fedavg": {"strategy": "fedavg"},
    "fedprox": {"strategy": "fedprox"},
    "fedyogi": {"strategy": "fedyogi"},
}


def heart_seed(
    data_dir: Path,
    seed: int,
    overrides: Mapping[str, Any] | None = None,
    methods: Sequence[str] = HEART_METHODS,
) -> dict[str, dict[str, Any]]:
    """Run every heart method for one seed.

    Returns method -> {"pooled": accuracy on the pooled test set, "pooled_auc",
    <hospital>: accuracy on that hospital's held-out split}.
    """
    config = {
        **HEART_CONFIG,
        **(overrides or {}),
        "data-path": str(data_dir),
        "seed": seed,
    }
    cfg = RunConfig.from_run_config(full_run_config(**config))
    dataset = get_dataset(cfg.data_spec())
    names = dataset.hospital_names(0)
    sites = [dataset.hospital(i, len(names)) for i in range(len(names))]
    test = dataset.server_test()
    epochs = cfg.num_server_rounds * cfg.local_epochs
    results: dict[str, dict[str, Any]] = {}
    if "pooled" in methods:
        model = train_pooled(cfg, sites, pool([s.train for s in sites]), epochs)
        results["pooled"] = heart_scores(model, test, sites)
    if "local-only" in methods:
        results["local-only"] = local_only(cfg, sites, test, epochs)
    results |= heart_federated(config, methods, test, sites)
    results |= heart_personalised(config, methods, len(sites))
    return results


def heart_scores(
    model: torch.nn.Module, test: Split, sites: Sequence[HospitalData]
) -> dict[str, Any]:
    """Accuracy and AUC on the pooled test set, accuracy on each hospital's."""
    pooled = evaluate_split(model, test, CPU)
    out: dict[str, Any] = {"pooled": pooled["accuracy"], "pooled_auc": pooled["auc"]}
    for site in sites:
        out[site.name] = evaluate_split(model, site.val, CPU)["accuracy"]
    return out


def heart_federated(
    config: Mapping[str, Any],
    methods: Sequence[str],
    test: Split,
    sites: Sequence[HospitalData],
) -> dict[str, dict[str, Any]]:
    """The federated methods among ``methods`` (fedavg+finetune rides on fedavg)."""
    personal = "fedavg+finetune" in methods
    results: dict[str, dict[str, Any]] = {}
    for method, changes in FEDERATED.items():
        finetune = method == "fedavg" and personal
        if method not in methods and not finetune:
            continue
        run_config = {**config, **changes}
        if finetune:  # the hospitals' own evaluation, after local fine-tuning
            run_config.update(
                {"personalize-epochs": FINETUNE_EPOCHS, "fraction-evaluate": 1.0}
            )
        run = federate(run_config, len(sites))
        results[method] = heart_scores(run.model, test, sites)
        results[method]["rounds_accuracy"] = [
            r.server.get("accuracy", math.nan) for r in run.rounds
        ]
        if finetune:
            results["fedavg+finetune"] = personalised_scores(run.last_evaluations())
    return results


def personalised_scores(evaluations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Score the last round's per-hospital evaluation after fine-tuning, pooled.

    Each hospital reports ``personal_accuracy`` (``personalize-epochs``: a local
    copy of the global model fine-tuned on its own training split) on its
    held-out rows; pooled = weighted by those rows.
    """
    out: dict[str, Any] = {}
    correct = total = 0.0
    for name, ev in evaluations.items():
        out[name] = ev["personal_accuracy"]
        correct += ev["personal_accuracy"] * ev["num-examples"]
        total += ev["num-examples"]
    out["pooled"] = correct / total
    return out


def _heart_plots(
    out_dir: Path, per_seed: list[dict[str, dict[str, Any]]], hospitals: list[str]
) -> list[str]:
    methods = list(HEART_METHODS)
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    means = [mean_std([s[m]["pooled"] for s in per_seed]) for m in methods]
    ax.bar(
        methods,
        [m for m, _ in means],
        yerr=[s for _, s in means],
        capsize=4,
        color=[f"C{i}" for i in range(len(methods))],
    )
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for method, anchor in FLAMBY_ANCHORS.items():
        x = methods.index(method)
        ax.plot([x - 0.4, x + 0.4], [anchor, anchor], color="k", linestyle="--")
    ax.axhline(HEART_GOAL, color="orange", linewidth=1, label=f"goal {HEART_GOAL}")
    ax.plot([], [], color="k", linestyle="--", label="FLamby")
    ax.set_ylim(0.5, 0.9)
    ax.set_ylabel("accuracy, pooled test set")
    ax.set_title(
        f"Fed-Heart-Disease, mean ± std over {len(per_seed)} seeds", fontsize=10
    )
    ax.legend(fontsize=8, loc="lower right")
    files = [save_figure(fig, out_dir, "heart-pooled-accuracy.png")]

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        stats = [mean_std([s[method][h] for s in per_seed]) for h in hospitals]
        xs = np.arange(len(hospitals)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(
            xs,
            [m for m, _ in stats],
            width,
            yerr=[s for _, s in stats],
            capsize=2,
            label=method,
        )
    ax.set_xticks(np.arange(len(hospitals)), hospitals)
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("accuracy, hospital's held-out split")
    ax.set_title(
        "per-hospital test accuracy (local-only: the hospital's own model)", fontsize=10
    )
    ax.legend(fontsize=7, ncol=6, loc="upper center")
    files.append(save_figure(fig, out_dir, "heart-per-hospital.png"))

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for method in FEDERATED:
        curves = np.array([s[method]["rounds_accuracy"] for s in per_seed], dtype=float)
        mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
        rounds = np.arange(len(mean))
        ax.plot(rounds, mean, label=method)
        ax.fill_between(rounds, mean - std, mean + std, alpha=0.2)
    pooled = mean_std([s["pooled"]["pooled"] for s in per_seed])[0]
    ax.axhline(pooled, color="#777", linestyle=":", label="pooled (final)")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy, pooled test set")
    ax.set_title("federated training curves (server-side evaluation)", fontsize=10)
    ax.legend(fontsize=8)
    files.append(save_figure(fig, out_dir, "heart-rounds.png"))
    return files


def heart_data_dir(args: argparse.Namespace) -> Path:
    path = default_data_root(args) / "heart-disease"
    if not path.is_dir():
        raise SystemExit(
            f"heart-disease data not found at {path}; pass --data-root <folder holding "
            "heart-disease/>"
        )
    return path


@register("heart")
def heart(args: argparse.Namespace) -> BenchmarkResult:
    data_dir = heart_data_dir(args)
    quick = bool(getattr(args, "quick", False))
    n_seeds = args.seeds or (2 if quick else 5)
    overrides = HEART_QUICK if quick else {}
    torch.set_num_threads(1)
    per_seed = []
    cpu = time.process_time()
    for seed in range(n_seeds):
        start = time.perf_counter()
        # Metric inputs come from our own code; sklearn's checks only cost time.
        with sklearn.config_context(skip_parameter_validation=True):
            per_seed.append(heart_seed(data_dir, seed, overrides))
        print(
            f"heart: seed {seed} done in {time.perf_counter() - start:.1f}s "
            f"(pooled test acc: "
            + ", ".join(f"{m} {per_seed[-1][m]['pooled']:.3f}" for m in HEART_METHODS)
            + ")",
            flush=True,
        )
    hospitals = [h for h in per_seed[0]["pooled"] if h not in ("pooled", "pooled_auc")]
    rows = [heart_row(method, per_seed, hospitals) for method in HEART_METHODS]
    figures = {m: heart_figures(m, per_seed, hospitals) for m in HEART_METHODS}
    settings = {**HEART_CONFIG, **overrides}
    judged = not quick and n_seeds >= HEART_PROTOCOL_SEEDS
    summary = heart_summary(figures, settings, n_seeds, judged)
    summary["cpu_seconds"] = time.process_time() - cpu
    return BenchmarkResult(
        suite="heart",
        rows=rows,
        summary=summary,
        notes=heart_notes(settings, summary["total_epochs"])
        + (
            []
            if judged
            else [
                f"Goals not judged: they hold for {HEART_PROTOCOL_SEEDS} seeds at full "
                "settings (this run: --quick or fewer seeds)."
            ]
        ),
        plots=_heart_plots(suite_dir(args, "heart"), per_seed, hospitals),
        details={"settings": settings, "methods": figures, "per_seed": per_seed},
    )


def heart_row(
    method: str, per_seed: list[dict[str, dict[str, Any]]], hospitals: list[str]
) -> dict[str, Any]:
    """The table row of ``method``: mean ± sd over seeds of every figure."""
    row: dict[str, Any] = {
        "method": method,
        "pooled test acc": mean_sd([s[method]["pooled"] for s in per_seed]),
        "pooled AUC": mean_sd(
            [s[method].get("pooled_auc", math.nan) for s in per_seed]
        ),
    }
    for h in hospitals:
        row[h] = mean_sd([s[method][h] for s in per_seed])
    row["FLamby"] = FLAMBY_ANCHORS.get(method, "")
    return row


def heart_figures(
    method: str, per_seed: list[dict[str, dict[str, Any]]], hospitals: list[str]
) -> dict[str, Any]:
    """results.json's figures of ``method``: mean and sd, per-seed accuracies."""
    accs = [s[method]["pooled"] for s in per_seed]
    mean, sd = mean_std(accs)
    return {
        "pooled_accuracy": {"mean": mean, "sd": sd, "per_seed": accs},
        "pooled_auc": mean_sd(
            [s[method].get("pooled_auc", math.nan) for s in per_seed]
        ),
        "hospitals": {h: mean_sd([s[method][h] for s in per_seed]) for h in hospitals},
        **_global_of_personalised(method, per_seed),
    }


def _global_of_personalised(
    method: str, per_seed: list[dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """A personalised method's global model in the same run (where it has one)."""
    if "global_pooled" not in per_seed[0][method]:
        return {}
    accs = [s[method]["global_pooled"] for s in per_seed]
    mean, sd = mean_std(accs)
    return {"global_pooled_accuracy": {"mean": mean, "sd": sd, "per_seed": accs}}


def heart_summary(
    figures: dict[str, dict[str, Any]],
    settings: Mapping[str, Any],
    n_seeds: int,
    judged: bool = True,
) -> dict[str, Any]:
    """The headline figures: the best federated method against the goal.

    ``judged``: the run follows the goals' protocol (``HEART_PROTOCOL_SEEDS``
    seeds, full settings); otherwise no ``goal_*`` flag is given, since a pass on
    fewer seeds or rounds says nothing of the goal.
    """
    federated = {
        m: figures[m]["pooled_accuracy"]["mean"]
        for m in (*FEDERATED, "fedavg+finetune")
    }
    best = max(federated, key=federated.__getitem__)
    summary = {
        "seeds": n_seeds,
        "best_federated_method": best,
        "best_federated_pooled_accuracy": federated[best],
        "pooled_accuracy": figures["pooled"]["pooled_accuracy"]["mean"],
        "goal_best_federated_ge_0.80": federated[best] >= HEART_GOAL,
        "total_epochs": settings["num-server-rounds"] * settings["local-epochs"],
        **heart_targets(figures),
    }
    return judged_goals(summary, judged)


def heart_targets(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Best personalised method (each test record scored by its hospital's model)
    and best single global model (federated), against the issue's targets.
    """
    personal = {
        m: figures[m]["pooled_accuracy"]["mean"]
        for m in ("fedavg+finetune", *HEART_PERSONALISED)
        if m in figures
    }
    single = {
        m: figures[m]["pooled_accuracy"]["mean"]
        for m in (*FEDERATED, *HEART_GLOBAL_RECIPES)
        if m in figures
    }
    best_p = max(personal, key=personal.__getitem__)
    best_g = max(single, key=single.__getitem__)
    return {
        "best_personalised_method": best_p,
        "best_personalised_pooled_accuracy": personal[best_p],
        f"goal_personalised_ge_{HEART_PERSONAL_GOAL}": (
            personal[best_p] >= HEART_PERSONAL_GOAL
        ),
        "best_global_method": best_g,
        "best_global_pooled_accuracy": single[best_g],
        f"goal_global_ge_{HEART_GLOBAL_GOAL}": single[best_g] >= HEART_GLOBAL_GOAL,
    }


def heart_notes(settings: Mapping[str, Any], total_epochs: int) -> list[str]:
    return [
        "Accuracy of the final model (threshold 0.5). 'pooled test acc' is on the "
        "union of the four hospitals' held-out 34% (FLamby's pooled test); hospital "
        "columns on "
        "each hospital's own held-out rows.",
        "local-only: each hospital trains alone; its column is its own model on its "
        "own "
        "test rows, 'pooled' scores every test record with its hospital's model.",
        "Same model (logistic regression, 13 features), per-site standardisation, SGD "
        f"settings and {total_epochs} total epochs for every baseline method "
        f"(federated: {settings['num-server-rounds']} rounds x "
        f"{settings['local-epochs']} local epoch).",
        "FLamby anchors: pooled 0.795, FedAvg 0.748, FedYogi 0.779 (their splits and "
        "tuning differ; compare trends, not third decimals).",
        "fedavg+public-bounds and the personalised methods (finetune, "
        "finetune-bias, ditto, apfl, fedrep, fenda; recipes in "
        "scripts/benchmarks/personalization.py, chosen on tuning seeds 1000-1002, "
        "finetune-bias on 1000-1009) standardise every site with the dataset's public "
        "feature bounds; a personalised method's 'pooled' scores each test record "
        "with its hospital's own model, its global_pooled_accuracy (results.json) "
        "is the same run's global model (none for fedrep and fenda, whose server "
        "head is never trained).",
    ]


# ------------------------------------------------------------------------ cost

# Workloads of the cost suite: run-config overrides (data paths filled in later).
COST_WORKLOADS: dict[str, dict[str, Any]] = {
    # BreastMNIST across 10 hospitals, the default imaging model (no augmentation so
    # centralized and federated do exactly the same work per epoch).
    "imaging": {
        "task": "imaging",
        "dataset": "medmnist",
        "augment": False,
        "partitioner": "iid",
        "batch-size": 32,
        "learning-rate": 0.01,
    },
    # wdbc across 10 hospitals, logistic regression (the default tabular run).
    "tabular": {"dataset": "wdbc", "partitioner": "iid"},
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
    torch.manual_seed(cfg.seed)
    model = model_spec(cfg, sites[0].info).build()
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
        run_config = _run_config_string({**config, "output-dir": tmp})
        start = time.perf_counter()
        with monitor or contextlib.nullcontext():
            outcome = run_simulation(
                app_dir=project_root(),
                num_hospitals=num_hospitals,
                run_config=run_config,
                echo=False,
            )
        total = time.perf_counter() - start
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


def _run_config_string(config: Mapping[str, Any]) -> str:
    """``k=v`` pairs as ``flwr run --run-config`` takes them (strings quoted)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return "'" + v.replace("'", "") + "'"
        return repr(v)

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


def _history_of(output_dir: Path, run_id: str | None) -> RunHistory:
    from scripts.simulate import find_run_dir

    run_dir = find_run_dir(output_dir, run_id)
    if run_dir is None:
        raise RuntimeError(f"no run folder for Flower run {run_id} in {output_dir}")
    return read_history(run_dir)


# ----------------------------------------------------------------------- scale

SCALE_HOSPITALS = (10, 50, 100)
SCALE_QUICK_HOSPITALS = (10, 20)
SCALE_MEMORY_GOAL_GB = 8.0
SCALE_ROUND_RATIO_GOAL = 1.5  # medflower / bare-Flower floor, rounds after the first
SCALE_FIRST_ROUND_RATIO_GOAL = 1.3
# One invocation's wall-clock ratios moved by ~0.2-0.3 between identical runs on
# an idle machine (mostly the floor's own rounds): each app runs this many times,
# alternately, at sizes up to SCALE_REPEAT_MAX_HOSPITALS, and medians are reported.
SCALE_REPEATS = 3
SCALE_REPEAT_MAX_HOSPITALS = 100
FLOOR_APP = Path(__file__).resolve().parent / "floor"  # the bare-Flower app
# A wdbc-like table split IID across N hospitals: wdbc itself (455 pooled records)
# cannot give 1,000 hospitals a training and a held-out record each.
SCALE_RECORDS = 20_000
SCALE_CONFIG: dict[str, Any] = {
    "dataset": "csv",
    "label-column": "target",
    "partitioner": "iid",
    "val-fraction": 0.2,
    "num-server-rounds": 3,
    "min-hospitals": 2,
    "report": False,
}


class TreeMemory:
    """Peak memory of this process's descendants, polled in a background thread.

    The descendants are ``flwr run``, the SuperLink, Ray and its workers.

    Reports the peak sum of RSS (double-counts shared pages, an upper bound) and
    of PSS (shared pages split between the processes sharing them), and
    ``cpu_s``: the CPU seconds (user + system) the processes had used when last
    seen (a process loses at most one interval). On a machine shared with other
    jobs wall time swings with their load; CPU seconds much less. ``steal``: the
    share of the machine's CPU time its hypervisor gave to other guests while
    monitoring (Linux's steal time; 0 where not reported), which slows every
    wall figure without showing in any process.
    """

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self._times: list[Any] = []  # the machine's CPU times on entering, leaving
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        rss = pss = 0
        procs = self._psutil.Process().children(recursive=True)
        for proc in procs:
            try:
                with proc.oneshot():
                    info = proc.memory_full_info()
                    cpu = proc.cpu_times()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            self._cpu[proc.pid] = cpu.user + cpu.system
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(procs))

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every process seen, as last seen."""
        return sum(self._cpu.values())

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._times = [self._psutil.cpu_times()]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._times.append(self._psutil.cpu_times())

    @property
    def steal(self) -> float:
        """Steal time over all CPU time between entering and leaving (0 to 1;
        NaN before leaving).
        """
        if len(self._times) != 2:
            return math.nan
        start, end = self._times
        total = sum(end) - sum(start)
        stolen = getattr(end, "steal", 0.0) - getattr(start, "steal", 0.0)
        return stolen / total if total > 0 else 0.0


@dataclass(frozen=True)
class RoundTimes:
    """A run's round times from its ServerApp's clock.

    ``elapsed`` is the clock at the end of round 0 (initial evaluation), 1, 2, ...
    Round 1 includes starting the Ray actors and their first imports; ``round_s``
    is the median of the rounds after it.
    """

    first_round_s: float
    round_s: float

    @classmethod
    def from_elapsed(cls, elapsed: Sequence[float]) -> RoundTimes:
        per_round = np.diff(np.asarray(elapsed, dtype=float))
        if not len(per_round):
            raise RuntimeError(f"no completed round in elapsed times {elapsed}")
        later = per_round[1:]
        return cls(
            float(per_round[0]), float(np.median(later)) if len(later) else math.nan
        )


def _figure(
    combine: Callable[[list[float]], float] = np.median, runs: bool = False
) -> Any:
    """A run figure and how repeated runs combine into one (``runs``: every run's
    value is kept beside it as ``<name>_runs``).
    """
    return dataclasses.field(metadata={"combine": combine, "runs": runs})


@dataclass(frozen=True)
class RunFigures:
    """What one real ``flwr run`` of an app measured at one federation size."""

    round_s: float = _figure(runs=True)
    first_round_s: float = _figure(runs=True)
    run_s: float = _figure()
    peak_pss_gb: float = _figure(max)  # memory: the largest of the runs
    run_cpu_s: float = _figure()
    cpu_steal: float = _figure()

    @classmethod
    def measured(
        cls, times: RoundTimes, run_s: float, memory: TreeMemory, **more: Any
    ) -> Self:
        """The figures of a run that took ``run_s`` seconds, its rounds ``times``
        and ``memory`` its processes (``more``: a subclass's own fields).
        """
        return cls(
            round_s=times.round_s,
            first_round_s=times.first_round_s,
            run_s=run_s,
            peak_pss_gb=memory.peak_pss / 2**30,
            run_cpu_s=memory.cpu_s,
            cpu_steal=memory.steal,
            **more,
        )


@dataclass(frozen=True)
class MedflowerFigures(RunFigures):
    """A medflower run's figures: the floor's and what only medflower reports."""

    peak_rss_gb: float = _figure(max)
    peak_processes: int = _figure(max)
    hospitals_reporting_min: int = _figure(min)  # the fewest of the runs
    final_accuracy: float = _figure()


def write_scale_table(path: Path, records: int = SCALE_RECORDS, seed: int = 0) -> Path:
    """Write a wdbc-like CSV of ``records`` rows: wdbc rows drawn with replacement,
    each feature jittered by 5% of its standard deviation (30 features, label
    ``target``, 1 = malignant).
    """
    from data.tabular import WDBCDataset

    x, y, names = WDBCDataset(RunConfig().data_spec()).load_table()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y), records)
    jitter = rng.normal(scale=0.05, size=(records, x.shape[1])) * x.std(axis=0)
    table = np.column_stack([np.abs(x[rows] + jitter), y[rows]])
    header = ",".join([*(n.replace(" ", "_") for n in names), "target"])
    fmt = ["%.6g"] * x.shape[1] + ["%d"]
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=fmt)
    return path


def scale_array_sizes(config: Mapping[str, Any]) -> list[int]:
    """Element counts of the scale workload's model arrays (the floor sends these)."""
    cfg = RunConfig.from_run_config(full_run_config(**config))
    info = get_dataset(cfg.data_spec()).info()
    model = model_spec(cfg, info).build()
    return [int(t.numel()) for t in model.state_dict().values()]


def scale_run(num_hospitals: int, config: Mapping[str, Any]) -> MedflowerFigures:
    """One real ``flwr run`` of medflower with ``num_hospitals`` SuperNodes."""
    memory = TreeMemory()
    total, history = timed_flwr_run(config, num_hospitals, monitor=memory)
    times = RoundTimes.from_elapsed([r.elapsed_s for r in history.rounds])
    trained = [len(r.hospitals or {}) for r in history.rounds[1:]]
    return MedflowerFigures.measured(
        times,
        total,
        memory,
        peak_rss_gb=memory.peak_rss / 2**30,
        peak_processes=memory.peak_processes,
        hospitals_reporting_min=min(trained) if trained else 0,
        final_accuracy=history.rounds[-1].server.get("accuracy", math.nan),
    )


def floor_run(num_hospitals: int, array_sizes: Sequence[int]) -> RunFigures:
    """One real ``flwr run`` of the bare-Flower floor app of the same shape."""
    from scripts.benchmarks.floor.floor_app import ROUND_LINE
    from scripts.flower.driver import run_simulation

    rounds = int(SCALE_CONFIG["num-server-rounds"])
    run_config = (
        f"num-server-rounds={rounds} array-sizes='{','.join(map(str, array_sizes))}'"
    )
    memory = TreeMemory()
    start = time.perf_counter()
    with memory:
        outcome = run_simulation(
            app_dir=FLOOR_APP,
            num_hospitals=num_hospitals,
            run_config=run_config,
            echo=False,
        )
    total = time.perf_counter() - start
    line = re.escape(ROUND_LINE).replace(r"\{round\}", r"(\d+)")
    line = line.replace(r"\{elapsed:\.3f\}", r"([0-9.]+)")
    clock = {int(r): float(e) for r, e in re.findall(line, outcome.log)}
    if not outcome.ok or sorted(clock) != list(range(rounds + 1)):
        raise RuntimeError(
            f"the floor app with {num_hospitals} hospitals ended with "
            f"{outcome.status} after rounds {sorted(clock)}:\n{outcome.log[-3000:]}"
        )
    times = RoundTimes.from_elapsed([clock[r] for r in range(rounds + 1)])
    return RunFigures.measured(times, total, memory)


def _repeats_note(asked: int | None) -> str:
    if asked is not None:
        return f"Each app run {asked} time(s) at every size (--repeats)"
    return (
        f"Each app run {SCALE_REPEATS} times at sizes up to "
        f"{SCALE_REPEAT_MAX_HOSPITALS} hospitals and once above (--repeats)"
    )


def scale_repeats(num_hospitals: int, asked: int | None) -> int:
    """Runs of each app at one size: ``--repeats`` when given, else
    ``SCALE_REPEATS`` up to ``SCALE_REPEAT_MAX_HOSPITALS`` hospitals and one above
    (a 1,000-hospital pair takes minutes).
    """
    if asked is not None:
        return asked
    return SCALE_REPEATS if num_hospitals <= SCALE_REPEAT_MAX_HOSPITALS else 1


def combine_runs(runs: Sequence[RunFigures], prefix: str = "") -> dict[str, Any]:
    """One size's figures from its repeated runs, each combined as its field says
    (the median unless the largest or the fewest is meant), keyed
    ``<prefix><name>``; figures marked so keep every run as ``<name>_runs``.
    """
    combined: dict[str, Any] = {}
    for spec in dataclasses.fields(runs[0]):
        values = [getattr(run, spec.name) for run in runs]
        key = f"{prefix}{spec.name}"
        value = spec.metadata["combine"](values)
        combined[key] = int(value) if spec.type == "int" else float(value)
        if spec.metadata["runs"]:
            combined[f"{key}_runs"] = [float(v) for v in values]
    return combined


def scale_size(
    num_hospitals: int,
    config: Mapping[str, Any],
    array_sizes: Sequence[int],
    repeats: int = 1,
) -> dict[str, Any]:
    """Run medflower and the floor (arrays of ``array_sizes`` elements) at one
    federation size, alternately ``repeats`` times; medians and ratios of the
    medians.
    """
    ours_runs, floor_runs = [], []
    for run in range(1, repeats + 1):
        of = f" (run {run}/{repeats})" if repeats > 1 else ""
        print(f"scale: {num_hospitals} hospitals: medflower{of} ...", flush=True)
        ours_runs.append(scale_run(num_hospitals, config))
        print(f"scale: {num_hospitals} hospitals: floor{of} ...", flush=True)
        floor_runs.append(floor_run(num_hospitals, array_sizes))
    ours, floor = combine_runs(ours_runs), combine_runs(floor_runs, prefix="floor_")
    row = {"hospitals": num_hospitals, "repeats": repeats, **ours, **floor}
    row["round_ratio"] = ours["round_s"] / floor["floor_round_s"]
    row["first_round_ratio"] = ours["first_round_s"] / floor["floor_first_round_s"]
    row["run_cpu_ratio"] = ours["run_cpu_s"] / floor["floor_run_cpu_s"]
    print(
        f"scale: {num_hospitals} hospitals: {ours['round_s']:.2f}s per round "
        f"(floor {floor['floor_round_s']:.2f}s, x{row['round_ratio']:.2f}), first "
        f"round {ours['first_round_s']:.1f}s (floor "
        f"{floor['floor_first_round_s']:.1f}s, x{row['first_round_ratio']:.2f}), "
        f"peak PSS {ours['peak_pss_gb']:.2f} GB, CPU {ours['run_cpu_s']:.0f}s "
        f"(floor {floor['floor_run_cpu_s']:.0f}s, x{row['run_cpu_ratio']:.2f}), "
        f"CPU steal {ours['cpu_steal']:.0%} (floor {floor['floor_cpu_steal']:.0%})"
        + (f"; medians of {repeats} runs each" if repeats > 1 else ""),
        flush=True,
    )
    return row


def _scale_figure(rows: Sequence[dict[str, Any]], out_dir: Path) -> str:
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    ns = [r["hospitals"] for r in rows]
    for key, label, marker in (
        ("round_s", "medflower, rounds 2+", "o"),
        ("first_round_s", "medflower, round 1", "s"),
        ("floor_round_s", "bare Flower, rounds 2+", "^"),
        ("floor_first_round_s", "bare Flower, round 1", "v"),
    ):
        left.plot(ns, [r[key] for r in rows], marker=marker, label=label)
    left.set_xscale("log")
    left.set_xlabel("simulated hospitals")
    left.set_ylabel("wall time per round (s)")
    left.legend(fontsize=8)
    right.plot(ns, [r["peak_pss_gb"] for r in rows], marker="o", label="medflower")
    right.plot(ns, [r["floor_peak_pss_gb"] for r in rows], marker="^", label="floor")
    right.axhline(SCALE_MEMORY_GOAL_GB, color="orange", linewidth=1, label="8 GB goal")
    right.set_xscale("log")
    right.set_xlabel("simulated hospitals")
    right.set_ylabel("peak PSS (GB)")
    right.legend(fontsize=8)
    return save_figure(fig, out_dir, "scale.png")


def _scale_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_size = {r["hospitals"]: r for r in rows}
    largest = rows[-1]
    summary: dict[str, Any] = {
        "largest_federation": largest["hospitals"],
        "largest_round_s": largest["round_s"],
        "largest_peak_pss_gb": largest["peak_pss_gb"],
    }
    if largest["hospitals"] >= 1000:  # the memory goal is set for 1,000 hospitals
        summary["goal_memory_le_8gb"] = largest["peak_pss_gb"] <= SCALE_MEMORY_GOAL_GB
    if 100 in by_size:
        at_100 = by_size[100]
        summary["goal_round_ratio_100_le_1_5"] = (
            at_100["round_ratio"] <= SCALE_ROUND_RATIO_GOAL
        )
        summary["goal_first_round_ratio_100_le_1_3"] = (
            at_100["first_round_ratio"] <= SCALE_FIRST_ROUND_RATIO_GOAL
        )
        if 1000 in by_size:
            growth = by_size[1000]["round_s"] / at_100["round_s"]
            summary["round_growth_100_to_1000"] = growth
            summary["goal_growth_le_12"] = growth <= 12
    return summary


@register("scale")
def scale(args: argparse.Namespace) -> BenchmarkResult:
    sizes = getattr(args, "hospitals", None) or (
        SCALE_QUICK_HOSPITALS if getattr(args, "quick", False) else SCALE_HOSPITALS
    )
    with tempfile.TemporaryDirectory(prefix="medflower-scale-") as tmp:
        table = write_scale_table(Path(tmp) / "wdbc-like.csv")
        config = {**SCALE_CONFIG, "data-path": str(table)}
        array_sizes = scale_array_sizes(config)
        repeats = getattr(args, "repeats", None)
        rows = [
            scale_size(n, config, array_sizes, scale_repeats(n, repeats)) for n in sizes
        ]
    notes = [
        "Real `flwr run` simulations (local SuperLink, Ray backend, 1 CPU per "
        "ClientApp: as many actors as cores) of a wdbc-like table of "
        f"{SCALE_RECORDS:,} records (wdbc rows resampled with 5% jitter) split IID, "
        f"logistic regression, {SCALE_CONFIG['num-server-rounds']} rounds, every "
        "hospital trains and evaluates each round.",
        "Floor: a bare Flower app (scripts/benchmarks/floor) of the same shape "
        f"(SuperNodes, arrays of {sum(array_sizes)} values, rounds, FedAvg with a "
        "train and an evaluate exchange per round) whose ClientApp returns its "
        "input, run right after medflower at each size; ratios are medflower / "
        f"floor. {_repeats_note(repeats)}, alternately, and each figure the "
        "median of the runs (peak memory: the largest); ratios of the medians.",
        "round_s: median of the rounds after the first, from each ServerApp's own "
        "clock; peak memory: summed PSS of every process the command started, "
        "polled every 0.5 s; run_cpu_s: CPU seconds (user + system) of those "
        "processes over the whole command (start-up included), less sensitive to "
        "other jobs' load than wall time; cpu_steal: the share of the machine's "
        "CPU time its hypervisor gave to other guests during the run (slows every "
        "wall figure). Machine: 2 CPU cores shared with other jobs.",
    ]
    result = BenchmarkResult(
        suite="scale",
        # the table: one figure per column; each run's timings are in "sizes"
        rows=[{k: v for k, v in r.items() if not k.endswith("_runs")} for r in rows],
        summary=_scale_summary(rows),
        notes=notes,
        plots=[_scale_figure(rows, suite_dir(args, "scale"))],
        sections={"sizes": rows},
    )
    return with_deploy(args, result)  # --deploy: the per-message section
