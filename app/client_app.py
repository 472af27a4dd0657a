"""medflower ClientApp: one hospital trains and evaluates on its own data.

Only model arrays and aggregate metrics leave this process: no record, path or
identifier. A data problem is logged here in full and answered with a generic
error the server can act on.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from app.config import RunConfig
from app.hospital import hospital_name, load_hospital, model_spec
from app.logs import route_to_flower
from data.spec import DataError, HospitalData
from models.training import (
    TrainSettings,
    evaluate_split,
    make_loader,
    pick_device,
    train_epochs,
)
from strategies.fedavg import HOSPITAL_RECORD

log = logging.getLogger(__name__)
DATA_ERROR_CODE = 4001

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[RunConfig, HospitalData, torch.nn.Module]:
    route_to_flower()
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    site = load_hospital(cfg, context.node_config)
    try:
        model = model_spec(cfg, site.info).build()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    except (ValueError, RuntimeError) as err:
        # This hospital's data do not fit the federation's model (other channels,
        # image size or classes): its own problem, reported without paths.
        raise DataError(
            f"the global model does not fit this hospital's data "
            f"({site.info.description}, input {site.info.input_shape}, "
            f"{site.info.num_classes} classes): {str(err).splitlines()[0]}",
            "the hospital's data do not fit the global model (shape, channels or classes)",
        ) from err
    return cfg, site, model


def _reply(msg: Message, site: HospitalData, metrics: dict[str, float], model=None) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics),
            HOSPITAL_RECORD: ConfigRecord({"name": site.name}),
        }
    )
    if model is not None:
        content["arrays"] = ArrayRecord(model.state_dict())
    return Message(content=content, reply_to=msg)


def _data_error(msg: Message, context: Context, err: DataError) -> Message:
    name = hospital_name(context.node_config)
    log.error("Hospital %s: %s", name, err)  # full detail stays in the local log
    return Message(Error(code=DATA_ERROR_CODE, reason=f"data error: {err.public_reason}"), reply_to=msg)


def _defined(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """Drop undefined metrics (e.g. AUC of a single-class split) and prefix keys."""
    return {f"{prefix}{k}": v for k, v in metrics.items() if v == v}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this hospital's training split."""
    try:
        cfg, site, model = _setup(msg, context)
    except DataError as err:
        return _data_error(msg, context, err)
    config = msg.content["config"]
    settings = TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=cfg.seed,
    )
    round_seed = cfg.seed + 1000 * int(config.get("server-round", 0))
    torch.manual_seed(round_seed)
    device = pick_device(cfg.device)
    loader = make_loader(site.train, cfg.batch_size, shuffle=True, seed=round_seed)
    stats = train_epochs(model, loader, settings, device)
    metrics = {
        "train_loss": stats["train_loss"],
        "num-examples": len(site.train),  # the dataset's length, never len(loader)
        **_defined(evaluate_split(model, site.val, device), "val_"),
    }
    return _reply(msg, site, metrics, model.cpu())


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this hospital's held-out split."""
    try:
        cfg, site, model = _setup(msg, context)
    except DataError as err:
        return _data_error(msg, context, err)
    metrics = _defined(evaluate_split(model, site.val, pick_device(cfg.device)), "")
    metrics["num-examples"] = len(site.val)
    return _reply(msg, site, metrics)
