"""The ``update-encoding`` part of the ``cost`` suite: bytes and accuracy per encoding.

Each dataset is federated once per encoding (float32, float16, int8) with the same
seed and settings, in process (:func:`scripts.benchmarks.federation.federate`,
messages serialised as on the wire). Bytes are given twice: the model's arrays
alone (what the encoding acts on) and every message both ways (which also carry
metrics, the hospital's name and the round's config: for a 62-value logistic
regression those outweigh the arrays). The accuracy and AUC are the final model's
on the server's test set, so their difference is what the encoding alone changed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common.serde import array_record_to_proto

from scripts.benchmarks.core import default_data_root
from scripts.benchmarks.federation import FederatedRun, federate
from strategies.encoding import ENCODINGS, PLAIN, encode

BYTES_GOAL = 0.5  # of float32's bytes
ACCURACY_GOAL_PT = 0.5  # points of accuracy lost at most

# Dataset -> run-config overrides (a data path filled in where one is needed).
WORKLOADS: dict[str, dict[str, Any]] = {
    "wdbc": {"dataset": "wdbc", "partitioner": "iid"},
    "breastmnist": {
        "task": "imaging",
        "dataset": "medmnist",
        "augment": False,
        "partitioner": "iid",
        "batch-size": 32,
        "learning-rate": 0.01,
    },
}


@dataclass(frozen=True)
class EncodingRun:
    """One dataset federated under one encoding."""

    dataset: str
    encoding: str
    bytes_up: int
    bytes_down: int
    model_bytes: int
    accuracy: float
    auc: float
    seconds: float

    @property
    def bytes(self) -> int:
        return self.bytes_up + self.bytes_down


def workloads(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The workloads whose data are here (BreastMNIST needs the shared data)."""
    npz = default_data_root(args) / "medmnist" / "breastmnist.npz"
    found = {"wdbc": WORKLOADS["wdbc"]}
    if npz.is_file():
        found["breastmnist"] = {**WORKLOADS["breastmnist"], "data-path": str(npz)}
    return found


def _bytes(run: FederatedRun, direction: str) -> int:
    return sum(t.num_bytes for t in run.grid.traffic if t.direction == direction)


def model_wire_bytes(model: torch.nn.Module, encoding: str) -> int:
    """Serialised bytes of ``model``'s arrays alone under ``encoding`` (the
    metrics and config records of a real message left out).
    """
    arrays = encode(ArrayRecord(model.state_dict()), encoding)
    return array_record_to_proto(arrays).ByteSize()


def measure(
    dataset: str, overrides: Mapping[str, Any], encoding: str, *, hospitals: int
) -> EncodingRun:
    """Federate ``dataset`` with ``update-encoding = encoding``."""
    run = federate(
        {**overrides, "update-encoding": encoding},
        hospitals,
        keep_delivered=False,
        name=f"{dataset}-{encoding}",
    )
    return EncodingRun(
        dataset=dataset,
        encoding=encoding,
        bytes_up=_bytes(run, "up"),
        bytes_down=_bytes(run, "down"),
        model_bytes=model_wire_bytes(run.model, encoding),
        accuracy=float(run.final_metrics.get("accuracy", float("nan"))),
        auc=float(run.final_metrics.get("auc", float("nan"))),
        seconds=run.seconds,
    )


def encoding_comparison(
    args: argparse.Namespace, settings: Mapping[str, Any], *, hospitals: int
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Rows, summary and details of every workload under every encoding.

    ``settings`` are the cost suite's run-config overrides (rounds, epochs, seed).
    """
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    details: list[dict[str, Any]] = []
    for dataset, overrides in workloads(args).items():
        config = {**overrides, **settings}
        runs = {
            enc: measure(dataset, config, enc, hospitals=hospitals) for enc in ENCODINGS
        }
        plain = runs[PLAIN]
        for encoding, run in runs.items():
            details.append(asdict(run))
            if encoding == PLAIN:
                continue
            ratio = run.model_bytes / plain.model_bytes
            messages = run.bytes / plain.bytes
            delta_pt = 100 * (run.accuracy - plain.accuracy)
            rows.append(
                {
                    "measure": f"update-encoding={encoding}, {dataset}: model "
                    "arrays bytes / float32",
                    "value": ratio,
                    "goal": f"<= {BYTES_GOAL}; accuracy within {ACCURACY_GOAL_PT} pt",
                    "detail": f"{run.model_bytes} B / {plain.model_bytes} B; whole "
                    f"messages both ways {messages:.3f}; test accuracy "
                    f"{run.accuracy:.4f} vs {plain.accuracy:.4f} ({delta_pt:+.2f} pt), "
                    f"AUC {run.auc:.4f} vs {plain.auc:.4f}",
                }
            )
            key = f"encoding_{dataset}_{encoding}"
            summary[f"{key}_bytes_ratio"] = ratio
            summary[f"{key}_message_bytes_ratio"] = messages
            summary[f"{key}_accuracy_delta_pt"] = delta_pt
            summary[f"{key}_auc_delta"] = run.auc - plain.auc
    return rows, summary, details
