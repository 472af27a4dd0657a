"""Benchmark suite ``heart`` (``medflower benchmark heart``): Fed-Heart-Disease.

Federated runs go through the real ServerApp and ClientApp in process
(:func:`scripts.benchmarks.federation.federate`: messages serialised as on the
wire, no Ray). Baselines (pooled, local-only) reuse the same model, preprocessing,
optimiser and training loop (``models.training``) for the same number of epochs.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from matplotlib.figure import Figure

from app.config import RunConfig
from data.registry import get_dataset
from data.spec import HospitalData, Split
from models.training import evaluate_split
from scripts.benchmarks.core import (
    BenchmarkResult,
    default_data_root,
    judged_goals,
    progress,
    register,
    suite_dir,
)
from scripts.benchmarks.federation import (
    CPU,
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
from scripts.benchmarks.reporting import mean_sd, mean_std, save_figure
from scripts.harness.inprocess import full_run_config

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
        run = federate(run_config, len(sites), name=method)
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
        progress(
            f"heart: seed {seed} done in {time.perf_counter() - start:.1f} s "
            f"(pooled test acc: "
            + ", ".join(f"{m} {per_seed[-1][m]['pooled']:.3f}" for m in HEART_METHODS)
            + ")"
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
        notes=heart_notes(settings, summary["total_epochs"], judged),
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


def heart_notes(
    settings: Mapping[str, Any], total_epochs: int, judged: bool = True
) -> list[str]:
    unjudged = [
        f"Goals not judged: they hold for {HEART_PROTOCOL_SEEDS} seeds at full "
        "settings (this run: --quick or fewer seeds)."
    ]
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
    ] + ([] if judged else unjudged)
