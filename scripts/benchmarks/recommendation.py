"""``medflower benchmark recommendation``: federated collaborative filtering.

On the MIMIC-IV demo's patient x drug and patient x lab-test matrices over ICU
care-unit sites (or any interactions file with ``--data``, split over ``--sites``
by users), each seed compares, with the same model (biased MF), the same
per-record budget (rounds x local epochs) and the same held-out split (each
patient's last interaction, ranked against the whole catalogue):

- ``pooled``: one model trained on every site's histories together;
- ``local-only``: each site alone; ``popularity``: the most frequent items;
- ``fedavg``, ``fedprox``, ``fedavg-dp-eps1`` / ``-eps8`` (patient-level local
  DP: noisy patient counts per item as item biases, delta reported),
  ``fedavg-secagg`` (SecAgg+), ``fedavg-dense`` (whole item tables on the
  wire, to measure what sparse updates save): real ServerApp and ClientApps in process
  (:func:`scripts.benchmarks.federation.federate`).

Settings (rounds, epochs, learning rate) were chosen on the validation split
(each patient's second-last interaction), never on the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.config import RunConfig
from app.recommendation.metrics import popularity_metrics, site_metrics
from app.recommendation.training import RecTrainSettings, resolve_loss, train_site
from data.interactions import InteractionSite
from data.registry import get_dataset
from models import ModelSpec
from models.recommender import UserTable
from scripts.benchmarks.core import (
    BenchmarkResult,
    default_data_root,
    register,
    suite_dir,
)
from scripts.benchmarks.federation import federate, initial_model
from scripts.benchmarks.reporting import mean_sd, mean_std, save_figure

METRICS = ("hr@10", "ndcg@10", "hr@5", "ndcg@5", "coverage@10", "rmse", "mae")
MIMIC = "recommendation/mimic-iv-demo-2.2"


@dataclasses.dataclass(frozen=True)
class Workload:
    """One interaction matrix and the run config that trains on it."""

    name: str
    run_config: dict[str, Any]
    sites: int
    methods: tuple[str, ...] = ()  # empty: every method


# Chosen on the validation split (each patient's second-last interaction) of the
# MIMIC-IV demo drugs and a synthetic MovieLens-shaped file, several seeds
# (docs/experiments.md): stronger L2 for ratings, where MF overfits first.
L2 = {"explicit": 0.1, "implicit": 0.01}
# Methods of a --data run by default: the comparison with pooled training (the
# DP and secure-aggregation rows cost most and are measured on MIMIC).
DATA_METHODS = ("pooled", "local-only", "popularity", "fedavg", "fedprox")


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "task": "recommendation",
        # every setting is given here: no preset fills a key left at its default
        # (--quick's 5 rounds are the default and would become the preset's 10)
        "preset": "none",
        "num-server-rounds": 5 if args.quick else 10,
        "local-epochs": 2,
        "optimizer": "adam",
        "learning-rate": 0.01,
        "batch-size": 64,
        "min-hospitals": 2,
    }


def _with_l2(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the L2 of its feedback kind (read from the data)."""
    dataset = get_dataset(RunConfig.from_run_config(config).data_spec())
    kind = "explicit" if dataset.pool.explicit else "implicit"
    return {**config, "rec-l2": L2[kind]}


def workloads(args: argparse.Namespace) -> list[Workload]:
    """The MIMIC drug and lab matrices, or the file given with ``--data``."""
    if getattr(args, "data", None):
        config = {
            **base_config(args),
            "dataset": "interactions",
            "data-path": str(args.data.resolve()),
            "site-by": "users",
            "batch-size": 256,
            "local-epochs": 4,
        }
        return [
            Workload(args.data.name, _with_l2(config), args.sites or 10, DATA_METHODS)
        ]
    root = default_data_root(args) / MIMIC
    if not root.is_dir():
        raise SystemExit(f"MIMIC-IV demo not found at {root}; give --data-root")
    out = []
    for matrix in ("drugs", "labs"):
        config = {
            **base_config(args),
            "dataset": "mimic-demo",
            "data-path": str(root),
            "rec-matrix": matrix,
            "site-by": "careunit",
        }
        spec = RunConfig.from_run_config(config).data_spec()
        sites = len(get_dataset(spec).natural_sites())
        out.append(Workload(matrix, _with_l2(config), sites))
    return out


def _weighted(per_site: Sequence[dict[str, float]]) -> dict[str, float]:
    """Patient-weighted means (the pooled figure over every evaluated patient)."""
    weights = np.array([m["num-examples"] for m in per_site], dtype=float)
    out = {}
    for key in METRICS:
        pairs = [
            (m[key], w) for m, w in zip(per_site, weights, strict=True) if key in m
        ]
        if pairs:
            values, w = zip(*pairs, strict=True)
            out[key] = float(np.average(values, weights=w))
    return out


def _centralised(cfg: RunConfig, site: InteractionSite, seed: int) -> dict[str, float]:
    """Train one model on ``site`` alone for the federation's whole budget."""
    # seeded: unseeded, the weights came from whatever state torch's global
    # generator was left in (runs differed)
    model = initial_model(
        ModelSpec(
            cfg.model_name, {"num_items": len(site.catalogue), "dim": cfg.rec_dim}
        ),
        seed,
    )
    users = UserTable(site.num_users, model.user_dim, seed=seed)
    settings = RecTrainSettings(
        epochs=cfg.num_server_rounds * cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        optimizer=cfg.optimizer,
        loss=resolve_loss(cfg.rec_loss, site.explicit),
        l2=cfg.rec_l2,
        seed=seed,
    )
    train_site(model, users, site.train, settings)
    return site_metrics(model, users.weight.detach(), site, "test")


# Patient-level DP rows: ``rec-dp-shared = "popularity"`` (each patient's item
# indicators scaled to the clip norm, summed, noised: the item biases become a
# noisy patient count per item; item factors stay at their seeded values), SGD
# 10 for the patient vectors, clip 1.0 (it scales only the bias updates); chosen
# on the validation split at epsilon 8 (docs/experiments.md).
DP = {
    "dp": "local",
    "dp-delta": 1e-3,
    "rec-dp-shared": "popularity",
    "optimizer": "sgd",
    "learning-rate": 10.0,
    "dp-max-grad-norm": 1.0,
}
FEDERATED: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedprox": {"strategy": "fedprox", "proximal-mu": 0.01},
    "fedavg-dp-eps1": {**DP, "dp-target-epsilon": 1.0},
    "fedavg-dp-eps8": {**DP, "dp-target-epsilon": 8.0},
    "fedavg-secagg": {"secure-aggregation": True},
    "fedavg-dense": {"rec-update": "dense"},
}


def one_seed(work: Workload, seed: int) -> dict[str, dict[str, float]]:
    """Every method's test metrics on ``work`` for one seed."""
    config = {**work.run_config, "seed": seed}
    cfg = RunConfig.from_run_config(config)
    dataset = get_dataset(cfg.data_spec())
    sites = dataset.sites(work.sites)
    pooled = dataset.pooled(work.sites)
    counts = np.bincount(pooled.train.item, minlength=len(pooled.catalogue))
    baselines = {
        "pooled": lambda: _centralised(cfg, pooled, seed),
        "local-only": lambda: _weighted([_centralised(cfg, s, seed) for s in sites]),
        "popularity": lambda: popularity_metrics(counts, pooled, "test"),
    }
    wanted = set(work.methods or (*baselines, *FEDERATED))
    out = {name: run() for name, run in baselines.items() if name in wanted}
    for name, extra in FEDERATED.items():
        if name not in wanted:
            continue
        run = federate({**config, **extra}, work.sites, name=name)
        final = run.rounds[-1]
        out[name] = {
            **{k: float(v) for k, v in (final.federated or {}).items()},
            "wire_mb": run.wire_bytes / 1e6,
        }
        privacy = run.history.privacy
        if privacy is not None and privacy.get("epsilon"):
            out[name]["epsilon"] = max(privacy["epsilon"].values())
            out[name]["delta"] = float(privacy["delta"])
    return out


def summarise(work: Workload, seeds: list[dict[str, dict[str, float]]]):
    """Rows (mean ± sd per method) and the ``methods`` means for results.json."""
    rows, methods = [], {}
    for name in seeds[0]:
        means: dict[str, Any] = {}
        row: dict[str, Any] = {"matrix": work.name, "method": name}
        for key in (*METRICS, "wire_mb", "epsilon", "delta"):
            values = [s[name][key] for s in seeds if key in s[name]]
            if not values:
                means[key] = None
                continue
            means[key], means[f"{key}_sd"] = mean_std(values)
            row[key] = mean_sd(values)
        methods[name] = means
        rows.append(row)
    return rows, methods


def plot(matrices: dict[str, Any], out_dir) -> str:
    """HR@10 (mean and sd over seeds) of every method, one group per matrix."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(matrices)
    for k, (name, found) in enumerate(matrices.items()):
        methods = found["methods"]
        x = np.arange(len(methods)) + k * width
        ax.bar(
            x,
            [m["hr@10"] for m in methods.values()],
            width,
            yerr=[m["hr@10_sd"] for m in methods.values()],
            label=name,
        )
        ax.set_xticks(x - k * width / 2 + (len(matrices) - 1) * width / 2)
        ax.set_xticklabels(list(methods), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("HR@10 (full catalogue)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, "recommendation-hr10.png")


@register("recommendation")
def recommendation_suite(args: argparse.Namespace) -> BenchmarkResult:
    # one seed for a --data file by default (its comparison must fit 20 CPU-min)
    n_seeds = args.seeds or (1 if getattr(args, "data", None) else 3)
    rows, matrices = [], {}
    for work in workloads(args):
        seeds = [one_seed(work, 42 + k) for k in range(n_seeds)]
        work_rows, methods = summarise(work, seeds)
        rows += work_rows
        matrices[work.name] = {
            "sites": work.sites,
            "methods": methods,
            "per_seed": seeds,
        }
    first = next(iter(matrices.values()))
    fed, pooled = first["methods"]["fedavg"], first["methods"]["pooled"]
    summary = {"fedavg_over_pooled_hr@10": fed["hr@10"] / pooled["hr@10"]}
    if pooled.get("rmse") is not None:
        summary["fedavg_over_pooled_rmse"] = fed["rmse"] / pooled["rmse"]
    if "fedavg-dp-eps8" in first["methods"]:
        dp = first["methods"]["fedavg-dp-eps8"]
        summary["dp_eps8_over_fedavg_hr@10"] = dp["hr@10"] / fed["hr@10"]
    return BenchmarkResult(
        plots=[plot(matrices, suite_dir(args, "recommendation"))],
        suite="recommendation",
        rows=rows,
        summary=summary,
        notes=[
            "HR@K/NDCG@K rank each patient's last interaction against the whole "
            "catalogue (no sampled negatives), excluding its earlier items.",
            "DP: patient-level DP (a patient's whole history is one record) on "
            "the item biases from each patient's item indicators scaled to the "
            "clip norm (rec-dp-shared = popularity; item factors stay at their "
            "seeded initial values), SGD 10, clip 1.0, delta = 1e-3.",
        ],
        sections={"methods": first["methods"], "matrices": matrices},
    )
