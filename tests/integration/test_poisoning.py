"""The poisoning test harness: who poisons, what they send, and that it is seen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import MessageType
from support.federation import make_context, make_message, make_run_config

from app.client.hospital import load_hospital, model_spec
from app.client_app import app as client_app
from app.config import RunConfig
from app.server_app import app as server_app
from scripts.harness.inprocess import InProcessGrid, run_inprocess
from scripts.harness.poisoning import is_poisoned, poison_update, with_poisoning


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


def _global_model(run_config):
    cfg = RunConfig.from_run_config(run_config)
    site = load_hospital(cfg, {"partition-id": 0, "num-partitions": 2})
    torch.manual_seed(0)
    return model_spec(cfg, site.info).build()


def _arrays(reply):
    return reply.content["arrays"].to_torch_state_dict()


def test_harness_poisons_the_poisoners_train_reply_only(tmp_path, task_identity):
    config = make_run_config(tmp_path, **{"poison-fraction": 0.5, "poison-scale": 3.0})
    model = _global_model(config)
    poisoned_app = with_poisoning(client_app, config)
    honest_config = make_run_config(tmp_path)
    for partition in (0, 1):  # 0 poisons (lowest id), 1 is honest
        honest = client_app(
            make_message(model), make_context(honest_config, partition, 2)
        )
        reply = poisoned_app(make_message(model), make_context(config, partition, 2))
        expected = _arrays(honest)
        if partition == 0:
            expected = poison_update(model.state_dict(), expected, 3.0)
        assert all(torch.equal(_arrays(reply)[k], v) for k, v in expected.items())
    evaluate = make_message(model, MessageType.EVALUATE)
    reply = poisoned_app(evaluate, make_context(config, 0, 2))
    assert not reply.has_error() and "arrays" not in reply.content


def test_harness_is_installed_only_when_asked_and_refuses_secure_aggregation(
    tmp_path,
):
    clean = InProcessGrid(client_app, 2, make_run_config(tmp_path))
    assert clean.client_app is client_app
    config = make_run_config(tmp_path, **{"poison-fraction": 0.5})
    assert InProcessGrid(client_app, 2, config).client_app is not client_app
    config["secure-aggregation"] = True
    with pytest.raises(ValueError, match="secure-aggregation"):
        InProcessGrid(client_app, 2, config)
