"""The poisoning test harness: who poisons, what they send, and that it is seen."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from support.federation import make_run_config

from app.client_app import app as client_app
from app.server_app import app as server_app
from scripts.harness.inprocess import run_inprocess
from scripts.harness.poisoning import is_poisoned, poison_update


def test_lowest_partition_ids_poison_and_deployment_never_does() -> None:
    chosen = [
        p
        for p in range(10)
        if is_poisoned(0.2, {"partition-id": p, "num-partitions": 10})
    ]
    assert chosen == [0, 1]
    assert not is_poisoned(0.0, {"partition-id": 0, "num-partitions": 10})
    assert not is_poisoned(0.5, {"data-path": "/data/site.csv"})


def test_poisoned_update_is_flipped_and_scaled() -> None:
    g = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    local = {"w": torch.tensor([1.5, 1.0]), "n": torch.tensor(4)}
    out = poison_update(g, local, 10.0)
    assert torch.equal(out["w"], torch.tensor([-4.0, 12.0]))  # g - 10 (l - g)
    assert torch.equal(out["n"], torch.tensor(4))  # integer buffers untouched


def test_anomaly_report_flags_exactly_the_poisoners(tmp_path: Path) -> None:
    config = make_run_config(
        tmp_path,
        **{
            "num-server-rounds": 2,
            "poison-fraction": 0.2,
            "strategy": "fedmedian",
            "fraction-evaluate": 0.0,
        },
    )
    run_inprocess(server_app, client_app, num_hospitals=5, run_config=config)
    history = json.loads(
        (tmp_path / "outputs" / "test-run" / "history.json").read_text()
    )
    for entry in history["rounds"][1:]:
        rows = entry["anomaly"]["hospitals"]
        assert [n for n, r in rows.items() if r["flagged"]] == ["hospital-0"]
        assert rows["hospital-0"]["cosine_to_median"] < 0
