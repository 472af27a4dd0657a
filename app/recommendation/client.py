"""The hospital's side of ``task = "recommendation"``.

A site keeps its patients' vectors in ``context.state`` (one row per patient, in
the site's own order) and sends back only the shared model: item rows (all of
them, or only those it changed: ``rec-update``), biases and network weights, and
aggregate metrics. No patient id, vector or per-patient value leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
)

from app.client import cache
from app.client.hospital import hospital_seed, model_spec
from app.config import RunConfig
from app.recommendation.metrics import site_metrics
from app.recommendation.training import (
    RecTrainSettings,
    fold_in,
    resolve_loss,
    train_site,
)
from data.interactions import InteractionSite
from data.spec import DataError
from models.recommender import UserTable
from strategies.screening import named_content
from strategies.sparse import encode

USERS_KEY = "rec-user-vectors"  # context.state: this site's patient vectors


def sparse_updates(cfg: RunConfig) -> bool:
    """Whether replies carry only changed item rows (see ``rec-update``)."""
    if cfg.rec_update == "auto":
        return cfg.dp == "none" and not cfg.secure_aggregation
    return cfg.rec_update == "sparse"


def rec_settings(cfg: RunConfig, config: Mapping[str, Any], seed: int, explicit: bool):
    """This round's local training settings from the run config and instruction."""
    return RecTrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=float(config.get("learning-rate", cfg.learning_rate)),
        optimizer=cfg.optimizer,
        loss=resolve_loss(cfg.rec_loss, explicit),
        l2=cfg.rec_l2,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=seed,
        max_steps=cfg.local_steps,
    )


def check_catalogue(site: InteractionSite, config: Mapping[str, Any]) -> None:
    """Refuse a site whose item catalogue is not the federation's."""
    if "input-shape" not in config:
        return
    expected = int(list(config["input-shape"])[0])
    if len(site.catalogue) != expected:
        raise DataError(
            f"Hospital {site.name}: its item catalogue has {len(site.catalogue)} "
            f"items but the federation's model has {expected}.",
            f"item catalogue of {len(site.catalogue)} items, the model has {expected}",
        )


def setup(msg: Message, context: Context):
    """Config, this site's data, the received shared model and the site's users."""
    # parsed, loaded and built once per run in this process (app/client/cache.py)
    cfg = cache.run_config(context.run_id, context.run_config)
    site: InteractionSite = cache.hospital(context.run_id, cfg, context.node_config)  # type: ignore[assignment]
    check_catalogue(site, msg.content.config_records.get("config", ConfigRecord()))
    model = cache.model(context.run_id, model_spec(cfg, site.info))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    users = UserTable(
        site.num_users,
        model.user_dim,
        seed=hospital_seed(cfg.seed, 0, context.node_config),
    )
    stored = context.state.array_records.get(USERS_KEY)
    weight = None if stored is None else stored["weight"].numpy()
    if weight is not None and weight.shape == tuple(users.weight.shape):
        users.weight.data = torch.from_numpy(weight.copy())
    else:  # a site that has not trained yet: fit its patients to the items
        fold_in(
            model, users, site.train, rec_settings(cfg, {}, cfg.seed, site.explicit)
        )
    return cfg, site, model, users


def reply(msg: Message, site: InteractionSite, metrics: dict, arrays=None) -> Message:
    content = named_content(site.name, {"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """One round of local training; the reply holds only the shared model."""
    cfg, site, model, users = setup(msg, context)
    config = msg.content["config"]
    seed = hospital_seed(
        cfg.seed, int(config.get("server-round", 0)), context.node_config
    )
    settings = rec_settings(cfg, config, seed, site.explicit)
    received = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    if cfg.dp == "local":
        from app.recommendation.dp import rec_dp_round  # Opacus: only under DP

        outcome = rec_dp_round(
            model, users, site.train, settings, cfg, context.state, context.node_config
        )
        metrics = outcome.metrics()
    else:
        metrics = train_site(model, users, site.train, settings)
    context.state[USERS_KEY] = ArrayRecord(
        {"weight": Array(users.weight.detach().numpy().copy())}
    )
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    keys = model.sparse_keys if sparse_updates(cfg) else ()
    metrics["num-examples"] = len(site.train)
    return reply(msg, site, metrics, encode(state, received, keys))


def evaluate(msg: Message, context: Context) -> Message:
    """Held-out ranking metrics of the received model with this site's users.

    Unprefixed metrics are on the test split (each patient's last interaction),
    ``val_`` ones on the validation split (the one before); ``num-examples`` is
    the number of patients evaluated on the test split.
    """
    cfg, site, model, users = setup(msg, context)
    vectors = users.weight.detach()
    test = site_metrics(model, vectors, site, "test", cfg.recommend_mode)
    val = site_metrics(model, vectors, site, "val", cfg.recommend_mode)
    if not test["num-examples"]:
        raise DataError(
            f"Hospital {site.name}: no patient has a held-out interaction "
            "(each needs at least 3).",
            "no patient with a held-out interaction",
        )
    metrics = {k: float(v) for k, v in test.items() if v == v}
    metrics.update(
        {f"val_{k}": float(v) for k, v in val.items() if k != "num-examples"}
    )
    metrics["num-examples"] = int(test["num-examples"])
    return reply(msg, site, metrics)
