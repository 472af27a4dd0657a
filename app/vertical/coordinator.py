"""The coordinator's side of vertical FL: PSI relay, then split training by batch.

The coordinator (the Flower ServerApp) never holds data or model weights. It knows
the parties' record counts, the aligned count and batch positions, and it relays
PSI bytes, embeddings and gradients. Batches are pipelined: the message that
delivers a party's gradient for batch ``t`` also asks for its embedding of batch
``t + 1``, so one training step costs one round trip to the feature parties and
one to the label holder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from app.vertical.data import split_positions
from app.vertical.psi import AlignmentReport, run_alignment

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


class VerticalProtocolError(RuntimeError):
    """The parties' answers do not allow vertical training (roles, counts)."""


class Transport(Protocol):
    """Delivers actions to parties (in parallel) and returns their replies in order."""

    def __call__(
        self, requests: Sequence[tuple[int, str, dict[str, Any], Tensors]]
    ) -> list[tuple[dict[str, Any], Tensors]]: ...


@dataclass(frozen=True)
class VerticalPlan:
    """Coordinator settings taken from the run config."""

    epochs: int = 5
    batch_size: int = 32
    test_fraction: float = 0.2
    seed: int = 42
    min_aligned: int = 10


@dataclass
class VerticalResult:
    alignment: AlignmentReport
    label_party: int
    feature_parties: list[int]
    num_train: int = 0
    num_test: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    bytes_relayed_training: int = 0


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def run_vertical_training(
    transport: Transport,
    parties: Sequence[int],
    plan: VerticalPlan,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> VerticalResult:
    """Align the parties' patients by PSI, then train the split model."""
    label, others, sizes, num_classes = _roles(transport, parties)
    report = _align(transport, label, others, sizes, plan)
    result = VerticalResult(report, label, others)
    n = report.intersection_size
    init = {"num-remote": len(others), "num-classes": num_classes}
    counts = transport([(p, "vfl_init", dict(init), {}) for p in [label, *others]])
    if any(int(c[0]["count"]) != n for c in counts):
        raise VerticalProtocolError(
            "parties disagree on the number of aligned patients."
        )

    train_pos, test_pos = split_positions(n, plan.test_fraction, plan.seed)
    result.num_train, result.num_test = len(train_pos), len(test_pos)
    rng = np.random.default_rng(plan.seed + 3)
    start = time.monotonic()
    for epoch in range(1, plan.epochs + 1):
        order = rng.permutation(train_pos)
        batches = [
            order[i : i + plan.batch_size].tolist()
            for i in range(0, len(order), plan.batch_size)
        ]
        entry: dict[str, Any] = {
            "round": epoch,
            "train_loss": train_epoch(transport, label, others, batches, result),
            "server": evaluate(transport, label, others, test_pos.tolist()),
            "elapsed_s": time.monotonic() - start,
        }
        result.history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
    return result


def _roles(
    transport: Transport, parties: Sequence[int]
) -> tuple[int, list[int], dict[int, int], int]:
    """The label holder, the feature parties, every record count, the classes."""
    infos = [r[0] for r in transport([(p, "vfl_info", {}, {}) for p in parties])]
    labels = [
        p for p, info in zip(parties, infos, strict=True) if info["role"] == "label"
    ]
    if len(labels) != 1:
        raise VerticalProtocolError(
            f"vertical FL needs exactly one label holder; {len(labels)} of "
            f"{len(parties)} parties hold the label column."
        )
    label = labels[0]
    others = [p for p in parties if p != label]
    if not others:
        raise VerticalProtocolError(
            "vertical FL needs at least one party besides the label holder."
        )
    sizes = {p: int(info["count"]) for p, info in zip(parties, infos, strict=True)}
    num_classes = int(next(i for i in infos if i["role"] == "label")["num-classes"])
    return label, others, sizes, num_classes


def _align(
    transport: Transport,
    label: int,
    others: list[int],
    sizes: dict[int, int],
    plan: VerticalPlan,
) -> AlignmentReport:
    """PSI over the transport; refuses fewer than ``plan.min_aligned`` patients."""

    def psi_send(
        requests: list[tuple[int, str, dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        return [
            r[0] for r in transport([(p, a, payload, {}) for p, a, payload in requests])
        ]

    report = run_alignment(psi_send, label, others, sizes)
    log.info(
        "PSI alignment: %d shared patients (chain counts %s, %.1f s, %d bytes relayed)",
        report.intersection_size,
        report.chain_counts,
        report.seconds,
        report.bytes_relayed,
    )
    if report.intersection_size < plan.min_aligned:
        raise VerticalProtocolError(
            f"only {report.intersection_size} patients are held by every party "
            f"(need >= {plan.min_aligned})."
        )
    return report


def train_epoch(
    transport: Transport,
    label: int,
    others: Sequence[int],
    batches: list[list[int]],
    result: VerticalResult,
) -> float:
    """One pipelined pass over ``batches``; the mean training loss.

    The feature parties' request for batch ``t`` carries their gradients of batch
    ``t - 1``; a last, empty step only flushes those. Relayed tensor bytes are
    added to ``result``.
    """
    grads: list[torch.Tensor] = []
    previous: list[int] = []
    total, seen = 0.0, 0
    for batch in [*batches, []]:
        requests = [
            (
                p,
                "vfl_bottom",
                {"backward": previous, "forward": batch},
                {"grad": grads[i]} if previous else {},
            )
            for i, p in enumerate(others)
        ]
        replies = transport(requests)
        result.bytes_relayed_training += sum(_nbytes(r[1]) for r in replies)
        result.bytes_relayed_training += sum(_nbytes(r[3]) for r in requests)
        if not batch:
            break
        embeddings = {
            f"embedding.{i}": r[1]["embedding"] for i, r in enumerate(replies)
        }
        ((metrics, tensors),) = transport(
            [(label, "vfl_top", {"positions": batch, "phase": "train"}, embeddings)]
        )
        grads = [tensors[f"grad.{i}"] for i in range(len(others))]
        previous = batch
        total += float(metrics["loss"]) * len(batch)
        seen += len(batch)
    return total / max(seen, 1)


def evaluate(
    transport: Transport, label: int, others: Sequence[int], positions: list[int]
) -> dict[str, float]:
    """Metrics of the split model on the given aligned positions (label holder)."""
    if not positions:
        return {}
    replies = transport([(p, "vfl_bottom", {"forward": positions}, {}) for p in others])
    embeddings = {f"embedding.{i}": r[1]["embedding"] for i, r in enumerate(replies)}
    ((metrics, _),) = transport(
        [(label, "vfl_top", {"positions": positions, "phase": "eval"}, embeddings)]
    )
    return {k: float(v) for k, v in metrics.items()}
