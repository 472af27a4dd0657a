"""``medflower benchmark vertical``: split learning vs the label holder alone vs a
centralised model, and the cost of PSI alignment at 10,000 patients per hospital.

The vertical model is trained through the real ServerApp and ClientApp (every
message serialised as on the wire, in process:
:func:`scripts.benchmarks.federation.federate`). The two references are trained
on plaintext data joined by ID, with the same network, initial weights, aligned
patients, train/test split, batches and optimizer: the centralised one is the
non-private upper bound, the label holder's the "no federation" baseline.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from app.vertical.data import (
    VerticalParty,
    simulate_parties,
    split_positions,
    standardized_features,
)
from app.vertical.psi import (
    align_in_memory,
    client_intersect,
    client_request,
    server_response,
    server_setup,
)
from app.vertical.split import BottomModel, SplitNetwork, TopModel
from models.metrics import classification_metrics
from scripts.benchmarks.core import BenchmarkResult, default_data_root, register
from scripts.benchmarks.federation import federate
from scripts.harness.inprocess import full_run_config

PSI_IDS_PER_PARTY = 10_000
PSI_BUDGET_S = 10.0


def _joined(parties: list[VerticalParty]) -> tuple[list[np.ndarray], np.ndarray]:
    """Plaintext join by ID in the protocol's order (references only)."""
    common = sorted(set.intersection(*(set(p.ids) for p in parties)))
    xs = []
    for p in parties:
        where = {i: r for r, i in enumerate(p.ids)}
        xs.append(p.x[[where[i] for i in common]])
    label = parties[0]
    where = {i: r for r, i in enumerate(label.ids)}
    assert label.y is not None
    return xs, label.y[[where[i] for i in common]]


def train_reference(
    xs: list[np.ndarray],
    y: np.ndarray,
    *,
    use: list[int],
    epochs: int,
    cfg: dict[str, Any],
) -> dict[str, float]:
    """The split network trained centrally on the parties in ``use``."""
    seed, emb, hidden = cfg["seed"], cfg["vertical-embedding"], cfg["mlp-hidden"]
    train_pos, test_pos = split_positions(len(y), cfg["test-fraction"], seed)
    data = [torch.as_tensor(standardized_features(xs[k], train_pos)) for k in use]
    bottoms = []
    for x in data:
        torch.manual_seed(seed)
        bottoms.append(BottomModel(x.shape[1], emb, hidden))
        if not bottoms[1:]:  # the label holder builds its top right after its bottom
            top = TopModel(emb * len(use), 2, hidden)
    net = SplitNetwork(bottoms, top)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["learning-rate"])
    labels = torch.as_tensor(y)
    rng = np.random.default_rng(seed + 3)
    for _ in range(epochs):
        order = rng.permutation(train_pos)
        for i in range(0, len(order), cfg["batch-size"]):
            b = order[i : i + cfg["batch-size"]]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                net([x[b] for x in data]), labels[b]
            ).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        proba = torch.softmax(net([x[test_pos] for x in data]).double(), 1).numpy()
    return classification_metrics(y[test_pos], proba)


def psi_scale(n: int = PSI_IDS_PER_PARTY) -> dict[str, Any]:
    """One PSI and the full two-party alignment, ``n`` IDs per party, half shared."""
    a = [f"MRN-{i:07d}" for i in range(n)]
    b = [f"MRN-{i:07d}" for i in range(n // 2, n + n // 2)]
    wall, cpu = time.perf_counter(), time.process_time()
    setup, server_key = server_setup(a, client_size=len(b))
    request, client_key = client_request(b)
    response = server_response(request, server_key)
    found = client_intersect(setup, response, client_key)
    single = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "bytes": len(setup) + len(request) + len(response),
        "intersection": len(found),
    }
    wall, cpu = time.perf_counter(), time.process_time()
    _, report = align_in_memory([a, b])
    full = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "critical_path_cpu_s": report.critical_path_cpu_seconds,
        "bytes": report.bytes_relayed,
        "messages": report.messages,
        "intersection": report.intersection_size,
    }
    return {
        "ids_per_party": n,
        "single_psi": single,
        "alignment": full,
        "load_average": os.getloadavg()[0],
        "budget_s": PSI_BUDGET_S,
    }


def vertical_config(dataset: str, path: str, epochs: int) -> dict[str, Any]:
    """The run config of a vertical federation on ``dataset``."""
    return full_run_config(
        **{
            "task": "vertical",
            "dataset": dataset,
            "data-path": path,
            "num-server-rounds": epochs,
            "optimizer": "adam",
            "learning-rate": 0.01,
            "batch-size": 32,
            "mlp-hidden": 32,
            "vertical-embedding": 8,
            "vertical-overlap": 0.8,
            "test-fraction": 0.25,
        }
    )


def compare(
    dataset: str, path: str, k: int, epochs: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Vertical federation of ``k`` hospitals against the two references.

    Returns the three table rows and the run's details (alignment, traffic).
    """
    cfg = vertical_config(dataset, path, epochs)
    fed = federate(cfg, k, name="vertical")
    split = simulate_parties(dataset, k, overlap=0.8, seed=cfg["seed"], data_path=path)
    xs, y = _joined(split)
    alone = train_reference(xs, y, use=[0], epochs=epochs, cfg=cfg)
    central = train_reference(xs, y, use=list(range(k)), epochs=epochs, cfg=cfg)
    vertical = fed.history.vertical or {}
    rows = [
        {
            "dataset": dataset,
            "hospitals": k,
            "aligned": vertical["aligned_patients"],
            "aligned test": vertical["test_patients"],
            "model": model,
            "accuracy": float(m["accuracy"]),
            "auc": float(m["auc"]),
        }
        for model, m in (
            ("vertical federated (PSI + split NN)", fed.final_metrics),
            ("label holder alone", alone),
            ("centralised, all features", central),
        )
    ]
    details = {
        "dataset": dataset,
        "hospitals": k,
        "feature_groups": [list(p.feature_names) for p in split],
        "patients_per_hospital": [len(p) for p in split],
        **vertical,
        "run_seconds": fed.seconds,
        "messages": fed.messages,
        "wire_bytes": fed.wire_bytes,
    }
    return rows, details


def benchmark_vertical(
    *,
    heart_path: str | None,
    epochs: int = 10,
    psi_ids: int = PSI_IDS_PER_PARTY,
    parties: tuple[int, ...] = (2, 3),
) -> BenchmarkResult:
    """Run every comparison (WDBC, and heart disease when its folder is given)."""
    torch.set_num_threads(1)
    datasets = [("wdbc", "")] + ([("heart-disease", heart_path)] if heart_path else [])
    rows: list[dict[str, Any]] = []
    details = []
    for dataset, path in datasets:
        for k in parties:
            run_rows, run_details = compare(dataset, path or "", k, epochs)
            rows += run_rows
            details.append(run_details)
    summary = {**psi_summary(psi_scale(psi_ids)), "epochs": epochs}
    notes = [
        "vertical federated = the real ServerApp/ClientApp message path (PSI "
        "alignment, then per-batch embeddings and gradients), run in process.",
        "references: same network, initial weights, patients, split, batches and "
        "optimizer, trained on plaintext data joined by ID (non-private).",
        "one PSI = setup + request + response + intersect between two hospitals; the "
        "full alignment runs two (the label holder learns I, then the other hospital).",
        "critical-path CPU = per round the slowest hospital's CPU time, summed: the "
        "wall time when each hospital has its own core (in process they run in turn).",
        "wall times depend on the machine's load (load_average_1min).",
    ]
    for d in details:
        notes.append(
            f"{d['dataset']}, {d['hospitals']} hospitals: features "
            f"{' / '.join(','.join(g) for g in d['feature_groups'])}; patients per "
            f"hospital {d['patients_per_hospital']}, aligned {d['aligned_patients']} "
            f"(PSI {d['psi_seconds']:.1f} s, {d['psi_bytes_relayed']:,} B); run "
            f"{d['run_seconds']:.0f} s, {d['messages']} messages, "
            f"{d['wire_bytes']:,} B."
        )
    return BenchmarkResult("vertical", rows, summary, notes, details={"runs": details})


def psi_summary(psi: dict[str, Any]) -> dict[str, Any]:
    """The headline PSI figures: one PSI and the two-hospital alignment."""
    single, full = psi["single_psi"], psi["alignment"]
    return {
        "psi_ids_per_hospital": psi["ids_per_party"],
        "psi_shared_ids": single["intersection"],
        "one_psi_wall_s": single["wall_s"],
        "one_psi_cpu_s": single["cpu_s"],
        "one_psi_bytes": single["bytes"],
        "alignment_2_hospitals_wall_s": full["wall_s"],
        "alignment_2_hospitals_cpu_s": full["cpu_s"],
        "alignment_2_hospitals_critical_path_cpu_s": full["critical_path_cpu_s"],
        "alignment_2_hospitals_bytes": full["bytes"],
        "alignment_2_hospitals_messages": full["messages"],
        "psi_budget_s": PSI_BUDGET_S,
        "load_average_1min": psi["load_average"],
    }


@register("vertical")
def vertical_suite(args: argparse.Namespace) -> BenchmarkResult:
    heart = default_data_root(args) / "heart-disease"
    return benchmark_vertical(
        heart_path=str(heart) if heart.is_dir() else None,
        epochs=5 if args.quick else 10,
        psi_ids=2_000 if args.quick else PSI_IDS_PER_PARTY,
        parties=(2,) if args.quick else (2, 3),
    )
