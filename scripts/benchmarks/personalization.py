"""``medflower benchmark personalization``: per-hospital accuracy on UCI heart
disease before and after personalization, and transfer from a source population.

* FedAvg on the 4 real hospitals, then each hospital fine-tunes a copy of the
  head on its own training split (``personalize-epochs``); both evaluated on the
  hospital's held-out split (FLamby reports 0.718 -> 0.735 mean accuracy).
* FedBN-style ``local-norm`` with ``model = "mlp-norm"``: normalisation layers
  stay local; accuracy of the global model vs the hospital's local-norm model.
* Transfer: a model trained on Cleveland + Hungary (source) starts a federation
  of Switzerland + Long Beach VA (target) via ``init-model``, compared with the
  same short federation from scratch.

Every run goes through the real ServerApp and ClientApp (in process); a hospital's
figures are its evaluate metrics of the last round, as history.json records them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from scripts.benchmarks.core import BenchmarkResult, default_data_root, register
from scripts.benchmarks.federation import FederatedRun, federate

SOURCE = ("processed.cleveland.data", "processed.hungarian.data")
TARGET = ("processed.switzerland.data", "processed.va.data")
FLAMBY = "FLamby (fine-tuning): mean per-client accuracy 0.718 -> 0.735"


def personal_run(
    data_dir: Path, out: Path, name: str, num_hospitals: int, **overrides: Any
) -> FederatedRun:
    """One heart-disease federation (batch 16) kept in ``out/name``."""
    config = {
        "dataset": "heart-disease",
        "data-path": str(data_dir),
        "batch-size": 16,
        **overrides,
    }
    return federate(config, num_hospitals, out_dir=out, name=name)


def _subset(root: Path, files: tuple[str, ...], into: Path) -> Path:
    """A folder of symlinks to some hospital files (no data is copied)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in files:
        (into / f).symlink_to(root / f)
    return into


def benchmark_personalization(heart: Path, *, rounds: int = 20) -> BenchmarkResult:
    torch.set_num_threads(1)
    common = {"num-server-rounds": rounds, "learning-rate": 0.05, "seed": 42}
    short = {**common, "num-server-rounds": max(2, rounds // 10)}
    with tempfile.TemporaryDirectory() as tmp:
        rows = personalization_rows(heart, Path(tmp), common)
        scratch, transfer = transfer_runs(heart, Path(tmp), common, short)
    summary: dict[str, Any] = {
        "rounds": rounds,
        "transfer_rounds": short["num-server-rounds"],
    }
    for site in sorted(scratch):
        summary[f"target {site}: from scratch"] = scratch[site]["accuracy"]
        summary[f"target {site}: from source model"] = transfer[site]["accuracy"]
    notes = [
        FLAMBY
        + "; here the mean row compares 'FedAvg logreg' with '+ head fine-tuned'.",
        "personalised weights (head copies, local norm parameters) never leave a "
        "hospital; only their held-out metrics are reported.",
        "transfer: source = Cleveland + Hungary, target = Switzerland + VA, "
        f"{short['num-server-rounds']} target rounds from scratch vs from the source "
        "model (init-model).",
    ]
    return BenchmarkResult("personalization", rows, summary, notes)


def personalization_rows(
    heart: Path, out: Path, common: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per hospital: FedAvg + fine-tuned head, FedBN + local norm; a mean row."""
    fedavg = personal_run(
        heart, out, "fedavg", 4, model="logreg", **{"personalize-epochs": 5}, **common
    ).last_evaluations()
    fedbn = personal_run(
        heart,
        out,
        "fedbn",
        4,
        model="mlp-norm",
        **{
            "local-norm": True,
            "personalize-epochs": 5,
            "mlp-hidden": 16,
            "mlp-layers": 1,
        },
        **common,
    ).last_evaluations()
    rows: list[dict[str, Any]] = []
    for site in sorted(fedavg):
        a, b = fedavg[site], fedbn.get(site, {})
        rows.append(
            {
                "hospital": site,
                "test records": int(a["num-examples"]),
                "FedAvg logreg": a["accuracy"],
                "+ head fine-tuned": a.get("personal_accuracy", float("nan")),
                "FedBN mlp-norm (global norm)": b.get("accuracy", float("nan")),
                "+ local norm": b.get("local_norm_accuracy", float("nan")),
                "+ local norm + head": b.get("personal_accuracy", float("nan")),
            }
        )
    mean = {
        "hospital": "mean (unweighted)",
        "test records": sum(r["test records"] for r in rows),
    }
    for key in list(rows[0])[2:]:
        mean[key] = sum(r[key] for r in rows) / len(rows)
    return [*rows, mean]


def transfer_runs(
    heart: Path, out: Path, common: dict[str, Any], short: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Target hospitals' evaluations: from scratch, and from the source's model."""
    source = _subset(heart, SOURCE, out / "source-data")
    target = _subset(heart, TARGET, out / "target-data")
    source_run = personal_run(source, out, "source", 2, model="logreg", **common)
    scratch = personal_run(target, out, "scratch", 2, model="logreg", **short)
    transfer = personal_run(
        target,
        out,
        "transfer",
        2,
        model="logreg",
        **{"init-model": str(source_run.model_path)},
        **short,
    )
    return scratch.last_evaluations(), transfer.last_evaluations()


@register("personalization")
def personalization_suite(args: argparse.Namespace) -> BenchmarkResult:
    heart = default_data_root(args) / "heart-disease"
    if not heart.is_dir():
        raise SystemExit(f"personalization needs the heart-disease files ({heart}).")
    return benchmark_personalization(heart, rounds=5 if args.quick else 20)
