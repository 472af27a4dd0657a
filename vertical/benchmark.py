"""``medflower benchmark vertical``: split learning vs the label holder alone vs a
centralised model, and the cost of PSI alignment at 10,000 patients per hospital.

The vertical model is trained through the real ServerApp and ClientApp (every
message serialised as on the wire, in process). The two references are trained
on plaintext data joined by ID, with the same network, initial weights, aligned
patients, train/test split, batches and optimizer: the centralised one is the
non-private upper bound, the label holder's the "no federation" baseline.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.vertical import (
    VerticalParty,
    simulate_parties,
    split_positions,
    standardized_features,
)
from models.metrics import classification_metrics
from vertical.psi import align_in_memory, client_intersect, client_request
from vertical.psi import server_response, server_setup
from vertical.split import BottomModel, SplitNetwork, TopModel

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
    xs: list[np.ndarray], y: np.ndarray, *, use: list[int], epochs: int, cfg: dict[str, Any]
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
            torch.nn.functional.cross_entropy(net([x[b] for x in data]), labels[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        proba = torch.softmax(net([x[test_pos] for x in data]).double(), 1).numpy()
    return classification_metrics(y[test_pos], proba)


def run_federated(cfg: dict[str, Any], num_parties: int) -> dict[str, Any]:
    """The vertical app through the ServerApp/ClientApp message path, in process."""
    from flwr.app import Context, RecordDict

    from app.client_app import app as client_app
    from app.inprocess import InProcessGrid
    from app.server_app import app as server_app

    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = {**cfg, "output-dir": tmp, "run-name": "vertical"}
        grid = InProcessGrid(client_app, num_parties, run_cfg)
        start = time.perf_counter()
        server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                 run_config=run_cfg))
        seconds = time.perf_counter() - start
        history = json.loads((Path(tmp) / "vertical" / "history.json").read_text())
    return {
        "metrics": history["final_server_metrics"],
        "vertical": history["vertical"],
        "seconds": seconds,
        "messages": len(grid.traffic),
        "wire_bytes": sum(t.num_bytes for t in grid.traffic),
    }


def psi_scale(n: int = PSI_IDS_PER_PARTY) -> dict[str, Any]:
    """One PSI and the full two-party alignment with ``n`` IDs per party (half shared)."""
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
    return {"ids_per_party": n, "single_psi": single, "alignment": full,
            "load_average": os.getloadavg()[0], "budget_s": PSI_BUDGET_S}


def benchmark_vertical(
    *, heart_path: str | None, epochs: int = 10, psi_ids: int = PSI_IDS_PER_PARTY,
    parties: tuple[int, ...] = (2, 3),
) -> dict[str, Any]:
    """Run every comparison; return the results (JSON-ready) and a Markdown table."""
    torch.set_num_threads(1)
    from app.inprocess import full_run_config

    datasets = [("wdbc", "")] + ([("heart-disease", heart_path)] if heart_path else [])
    rows = []
    for dataset, path in datasets:
        for k in parties:
            cfg = full_run_config(**{
                "task": "vertical", "dataset": dataset, "data-path": path or "",
                "num-server-rounds": epochs, "optimizer": "adam", "learning-rate": 0.01,
                "batch-size": 32, "mlp-hidden": 32, "vertical-embedding": 8,
                "vertical-overlap": 0.8, "test-fraction": 0.25,
            })
            fed = run_federated(cfg, k)
            split = simulate_parties(dataset, k, overlap=0.8, seed=cfg["seed"],
                                     data_path=path or "")
            xs, y = _joined(split)
            alone = train_reference(xs, y, use=[0], epochs=epochs, cfg=cfg)
            central = train_reference(xs, y, use=list(range(k)), epochs=epochs, cfg=cfg)
            groups = " | ".join(",".join(p.feature_names) for p in split)
            for model, m in (("vertical federated (PSI + split NN)", fed["metrics"]),
                             ("label holder alone", alone),
                             ("centralised, all features", central)):
                rows.append({
                    "dataset": dataset, "hospitals": k, "model": model,
                    "accuracy": m["accuracy"], "auc": m["auc"],
                    "aligned": fed["vertical"]["aligned_patients"],
                    "test": fed["vertical"]["test_patients"],
                })
            rows[-3]["run"] = {key: fed[key] for key in ("seconds", "messages", "wire_bytes")}
            rows[-3]["psi_seconds"] = fed["vertical"]["psi_seconds"]
            rows[-3]["feature_groups"] = groups
    psi = psi_scale(psi_ids)
    return {"epochs": epochs, "rows": rows, "psi": psi, "markdown": _markdown(rows, psi)}


def _markdown(rows: list[dict[str, Any]], psi: dict[str, Any]) -> str:
    lines = [
        "| dataset | hospitals | aligned (test) | model | accuracy | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['hospitals']} | {r['aligned']} ({r['test']}) | "
            f"{r['model']} | {r['accuracy']:.3f} | {r['auc']:.3f} |"
        )
    s, a = psi["single_psi"], psi["alignment"]
    n = psi["ids_per_party"]
    lines += [
        "",
        f"PSI, {n:,} IDs per hospital, {s['intersection']:,} shared "
        f"(load average {psi['load_average']:.1f} on this machine):",
        "",
        "| protocol | wall s | CPU s | critical-path CPU s | bytes relayed | messages |",
        "|---|---|---|---|---|---|",
        f"| one PSI (setup + request + response + intersect) | {s['wall_s']:.2f} | "
        f"{s['cpu_s']:.2f} | {s['cpu_s']:.2f} | {s['bytes']:,} | 3 |",
        f"| full 2-hospital alignment (both learn I, 2 PSIs) | {a['wall_s']:.2f} | "
        f"{a['cpu_s']:.2f} | {a['critical_path_cpu_s']:.2f} | {a['bytes']:,} | "
        f"{a['messages']} |",
        "",
        "Critical-path CPU: per round the slowest hospital's CPU time, summed (the wall "
        "time when each hospital has its own core; in process they run one after another).",
    ]
    return "\n".join(lines)


def write_results(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2)
    )
    (out_dir / "results.md").write_text(
        "# Vertical federated learning benchmark\n\n" + result["markdown"] + "\n"
    )
