import logging

import torch
from flwr.app import MessageType
from support.federation import make_context, make_message, make_run_config

from app.client.hospital import load_hospital, model_spec
from app.client_app import app as client_app
from app.config import RunConfig


def build_global(run_config):
    cfg = RunConfig.from_run_config(run_config)
    site = load_hospital(cfg, {"partition-id": 0, "num-partitions": 2})
    torch.manual_seed(0)
    return model_spec(cfg, site.info).build(), site


def test_train_returns_same_keys_and_dataset_length(tmp_path, task_identity):
    run_config = make_run_config(tmp_path)
    model, site = build_global(run_config)
    reply = client_app(make_message(model), make_context(run_config, 0, 2))
    assert not reply.has_error()
    arrays = reply.content["arrays"].to_torch_state_dict()
    assert set(arrays) == set(model.state_dict())
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(site.train)
    assert reply.content["hospital"]["name"] == "hospital-0"
    assert not all(torch.equal(arrays[k], v) for k, v in model.state_dict().items())


def test_fedprox_mu_pulls_update_towards_global(tmp_path, task_identity):
    run_config = make_run_config(tmp_path, **{"local-epochs": 3})
    model, _ = build_global(run_config)

    def distance(mu):
        msg = make_message(model, config={"server-round": 1, "proximal-mu": mu})
        out = client_app(msg, make_context(run_config, 0, 2))
        new = out.content["arrays"].to_torch_state_dict()
        return sum(
            float(((new[k] - v) ** 2).sum()) for k, v in model.state_dict().items()
        )

    assert distance(5.0) < distance(0.0)


def test_evaluate_reports_metrics_on_local_held_out(tmp_path, task_identity):
    run_config = make_run_config(tmp_path)
    model, site = build_global(run_config)
    msg = make_message(model, MessageType.EVALUATE)
    reply = client_app(msg, make_context(run_config, 1, 2))
    metrics = reply.content["metrics"]
    assert "arrays" not in reply.content
    assert metrics["num-examples"] == len(
        load_hospital(
            RunConfig.from_run_config(run_config),
            {"partition-id": 1, "num-partitions": 2},
        ).val
    )
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert {"loss", "balanced_accuracy", "sensitivity", "specificity"} <= set(metrics)


def test_missing_data_path_is_an_error_reply_without_the_path(tmp_path, task_identity):
    run_config = make_run_config(tmp_path)
    model, _ = build_global(run_config)
    secret = tmp_path / "hospital-secret-folder" / "patients.csv"
    context = make_context(
        run_config, node_config={"data-path": str(secret), "dataset": "csv"}
    )
    reply = client_app(make_message(model), context)
    assert reply.has_error()
    assert "data error" in reply.error.reason
    assert "hospital-secret-folder" not in reply.error.reason
    assert "patients.csv" not in reply.error.reason


def test_reply_carries_only_arrays_metrics_and_site_name(tmp_path, task_identity):
    run_config = make_run_config(tmp_path)
    model, _ = build_global(run_config)
    reply = client_app(make_message(model), make_context(run_config, 0, 2))
    assert set(reply.content.keys()) == {"arrays", "metrics", "hospital"}
    assert all(isinstance(v, (int, float)) for v in reply.content["metrics"].values())


class Collect(logging.Handler):
    """Keep the messages a logger emits (whatever its propagation)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_poison_fraction_is_ignored_with_one_warning(tmp_path, task_identity):
    """Outside the in-process harness a hospital always sends its honest update."""
    honest_config = make_run_config(tmp_path)
    poison_config = make_run_config(tmp_path, **{"poison-fraction": 0.5})
    model, _ = build_global(honest_config)
    honest = client_app(make_message(model), make_context(honest_config, 0, 2))
    context = make_context(poison_config, 0, 2)
    logger, collect = logging.getLogger("app.client.handlers"), Collect()
    logger.addHandler(collect)
    try:
        replies = [client_app(make_message(model), context) for _ in range(2)]
    finally:
        logger.removeHandler(collect)
    sent = replies[0].content["arrays"].to_torch_state_dict()
    expected = honest.content["arrays"].to_torch_state_dict()
    assert all(torch.equal(sent[k], v) for k, v in expected.items())
    warned = [m for m in collect.messages if "poison-fraction=0.5 ignored" in m]
    assert len(warned) == 1, collect.messages
