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

Every run goes through the real ServerApp and ClientApp (in process).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message

from app.client_app import app as client_app
from app.server_app import app as server_app
from scripts.benchmarks.core import BenchmarkResult, default_data_root, register
from scripts.harness.inprocess import InProcessGrid, full_run_config, server_context
from strategies.fedavg import hospital_of

SOURCE = ("processed.cleveland.data", "processed.hungarian.data")
TARGET = ("processed.switzerland.data", "processed.va.data")
FLAMBY = "FLamby (fine-tuning): mean per-client accuracy 0.718 -> 0.735"


class ReplyCapture(InProcessGrid):
    """Keeps each hospital's evaluate metrics of the latest round."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.evaluations: dict[str, dict[str, float]] = {}

    def push_messages(self, messages: Any) -> Any:
        ids = list(super().push_messages(messages))
        for i in ids:
            reply: Message | None = self._replies.get(i)
            if (
                reply is not None
                and reply.has_content()
                and reply.metadata.message_type.startswith("evaluate")
            ):
                metrics = next(iter(reply.content.metric_records.values()))
                self.evaluations[hospital_of(reply)] = dict(metrics)
        return ids


def federate(
    data_dir: Path, out: Path, name: str, num_hospitals: int, **overrides: Any
) -> tuple[dict[str, dict[str, float]], Path]:
    """One federation; each hospital's final evaluate metrics and the model file."""
    config = full_run_config(
        **{
            "dataset": "heart-disease",
            "data-path": str(data_dir),
            "output-dir": str(out),
            "run-name": name,
            "batch-size": 16,
            **overrides,
        }
    )
    grid = ReplyCapture(client_app, num_hospitals, config)
    server_app(
        grid,
        server_context(config),
    )
    return grid.evaluations, out / name / "final_model.pt"


def _subset(root: Path, files: tuple[str, ...], into: Path) -> Path:
    """A folder of symlinks to some hospital files (no data is copied)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in files:
        (into / f).symlink_to(root / f)
    return into


def benchmark_personalization(heart: Path, *, rounds: int = 20) -> BenchmarkResult:
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        common = {"num-server-rounds": rounds, "learning-rate": 0.05, "seed": 42}
        fedavg, _ = federate(
            heart,
            out,
            "fedavg",
            4,
            model="logreg",
            **{"personalize-epochs": 5},
            **common,
        )
        fedbn, _ = federate(
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
        )
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
        rows.append(mean)

        source = _subset(heart, SOURCE, out / "source-data")
        target = _subset(heart, TARGET, out / "target-data")
        _, source_model = federate(source, out, "source", 2, model="logreg", **common)
        short = {**common, "num-server-rounds": max(2, rounds // 10)}
        scratch, _ = federate(target, out, "scratch", 2, model="logreg", **short)
        transfer, _ = federate(
            target,
            out,
            "transfer",
            2,
            model="logreg",
            **{"init-model": str(source_model)},
            **short,
        )
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


@register("personalization", "per-hospital accuracy before/after personalization")
def personalization_suite(args: argparse.Namespace) -> BenchmarkResult:
    heart = default_data_root(args) / "heart-disease"
    if not heart.is_dir():
        raise SystemExit(f"personalization needs the heart-disease files ({heart}).")
    return benchmark_personalization(heart, rounds=5 if args.quick else 20)
