"""What a hospital does with each message: medflower's ClientApp handlers.

:mod:`app.client_app` registers these on the ClientApp and imports this module
on the first message (torch and the data and model code come with it).

Only model arrays and aggregate metrics leave this process: no record, path or
identifier. A data problem is logged here in full and answered with a generic
error the server can act on; so is any other failure during local work.
``poison-fraction`` is ignored here, with a warning: model poisoning is a test
harness the in-process Grid wraps around this app (:mod:`scripts.harness.poisoning`).
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import ModuleType

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
)

from app.client import cache
from app.client.decision import decision_metrics
from app.client.hospital import (
    check_contract,
    hospital_name,
    hospital_seed,
    model_spec,
    train_settings,
)
from app.client.input_stats import REPLY_KEY as INPUT_STATS_RECORD
from app.client.input_stats import input_statistics
from app.config import RunConfig
from app.logs import route_to_flower
from app.personalization import build_method
from app.privacy.accounting import PrivacyBudgetExhausted
from app.privacy.cohort_stats import REPLY_KEY as COHORT_STATS_RECORD
from app.privacy.cohort_stats import message_scaler, release_reply
from app.stats.client import hospital_min_records, stats_reply
from data.base import standardized
from data.preprocessing import GLOBAL_NORMALISATIONS
from data.spec import DataError, HospitalData
from models.personalization import LocalNorm, prefixed
from models.training import (
    evaluate_split,
    pick_device,
    predict_proba,
    seed_torch,
    set_deterministic,
)
from strategies.arrays import torch_state_dict
from strategies.encoding import PLAIN, decode, encode, layout_of
from strategies.screening import ERROR_PREFIX, label_count_metrics, named_content

log = logging.getLogger(__name__)
DATA_ERROR_CODE = 4001
LOCAL_FAILURE_CODE = 4002
PRIVACY_BUDGET_CODE = 4003
RECOMMENDATION_TASK = "recommendation"  # run config `task`: app/recommendation
HARNESS_WARNED = "harness-warned"  # context.state: the ignored settings, warned once
Handler = Callable[[Message, Context], Message]


def _setup(
    msg: Message, context: Context
) -> tuple[RunConfig, HospitalData, torch.nn.Module]:
    route_to_flower()
    # Parsed config, data and model skeleton: made once per run and hospital in
    # this process (app/client/cache.py), not on every message.
    cfg = cache.run_config(context.run_id, context.run_config)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    set_deterministic(cfg.deterministic)
    site = cache.hospital(context.run_id, cfg, context.node_config)
    config = msg.content.config_records.get("config", ConfigRecord())
    info = check_contract(site, config)
    scaler = message_scaler(config)
    if scaler is not None:  # a global normalisation: the federation's transform
        site = standardized(site, scaler)
    elif cfg.normalisation in GLOBAL_NORMALISATIONS:
        raise ValueError(
            f"normalisation='{cfg.normalisation}' but no global statistics were sent"
        )
    try:
        model = cache.model(context.run_id, model_spec(cfg, info))
        arrays = decode(  # update-encoding: the server's float16/int8 arrays
            msg.content["arrays"], cfg.update_encoding, layout_of(model.state_dict())
        )
        model.load_state_dict(torch_state_dict(arrays))
    except (ValueError, RuntimeError, KeyError) as err:
        # This hospital's data do not fit the federation's model (other channels,
        # image size or classes): its own problem, reported without paths.
        raise DataError(
            f"Hospital {site.name}: the global model does not fit this hospital's "
            f"data ({site.info.description}, input {site.info.input_shape}, "
            f"{site.info.num_classes} classes): {str(err).splitlines()[0]}",
            "the hospital's data do not fit the global model "
            "(shape, channels or classes)",
        ) from err
    return cfg, site, model


def _reply(
    msg: Message,
    site: HospitalData,
    metrics: dict[str, float],
    arrays: Mapping[str, torch.Tensor] | None = None,
    encoding: str = PLAIN,
) -> Message:
    content = named_content(site.name, {"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = encode(ArrayRecord(OrderedDict(arrays)), encoding)
    return Message(content=content, reply_to=msg)


def _error(msg: Message, context: Context, err: Exception) -> Message:
    """An error reply that says what failed without leaking local detail."""
    name = hospital_name(context.node_config)
    if isinstance(err, DataError):
        log.error("Hospital %s: %s", name, err)  # full detail stays in the local log
        return Message(
            Error(
                code=DATA_ERROR_CODE,
                reason=(
                    f"{ERROR_PREFIX.format(name=name)}data error: {err.public_reason}"
                ),
            ),
            reply_to=msg,
        )
    # Exception text may quote records or paths: only its type leaves the hospital.
    log.exception("Hospital %s: local %s failed", name, msg.metadata.message_type)
    return Message(
        Error(
            code=LOCAL_FAILURE_CODE,
            reason=f"{ERROR_PREFIX.format(name=name)}local "
            f"{msg.metadata.message_type} failed ({type(err).__name__})",
        ),
        reply_to=msg,
    )


def _answered(handler: Handler) -> Handler:
    """``handler`` with any failure answered by an error reply (:func:`_error`):
    one hospital's failure must not end the federation.
    """

    @functools.wraps(handler)
    def answered(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:
            return _error(msg, context, err)

    return answered


def _defined(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """Drop undefined metrics (e.g. AUC of a single-class split) and prefix keys."""
    return {f"{prefix}{k}": v for k, v in metrics.items() if v == v}


def _warn_harness_settings(cfg: RunConfig, context: Context) -> None:
    """Warn once per hospital and run that ``poison-fraction`` is ignored here.

    Poisoning is a test harness (``scripts/harness/poisoning.py``) that only the
    in-process Grid installs; this ClientApp always sends its honest update, so a
    run config can never make a real hospital send a corrupted model.
    """
    if cfg.poison_fraction > 0 and HARNESS_WARNED not in context.state:
        ignored = ConfigRecord({"poison-fraction": cfg.poison_fraction})
        context.state[HARNESS_WARNED] = ignored
        log.warning(
            "poison-fraction=%g ignored: poisoning is an in-process test harness "
            "(scripts/harness/poisoning.py); this hospital sends its honest update.",
            cfg.poison_fraction,
        )


def _train(msg: Message, context: Context) -> Message:
    cfg, site, model = _setup(msg, context)
    _warn_harness_settings(cfg, context)
    config = msg.content["config"]
    seed = hospital_seed(
        cfg.seed, int(config.get("server-round", 0)), context.node_config
    )
    settings = train_settings(
        cfg,
        # the server sends each round's rate (lr-schedule); older servers do not
        learning_rate=float(config.get("learning-rate", cfg.learning_rate)),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=seed,  # this round's and hospital's: shuffling, personal heads
    )
    method = build_method(cfg)  # personalization: what stays here, what is sent
    device = pick_device(cfg.device)
    seed_torch(seed, device)
    local_norm = LocalNorm(model, context.state) if cfg.local_norm else None
    if local_norm is not None:
        local_norm.use_local()  # FedBN: this hospital's own normalisation layers
    if cfg.dp == "local":
        # Opacus only under local DP (seconds of import for every other run)
        from app.privacy.local_dp import local_dp_round

        try:
            outcome = local_dp_round(
                model,
                site.train,
                settings,
                cfg,
                context.state,
                device,
                seed=seed,
                node_config=context.node_config,
            )
        except PrivacyBudgetExhausted as err:  # refused before any training
            return _budget_error(msg, site.name, err)
        # No training-data statistic (such as the training loss) leaves under DP.
        train_metrics = outcome.metrics()
    else:
        train_metrics = method.train(model, site.train, settings, context.state, device)
    # No held-out evaluation of the local model here: the evaluate message scores
    # the round's global model on the same split, and the local model's own fit
    # travels as the training-time loss (train_loss).
    metrics = {
        **train_metrics,
        "num-examples": len(site.train),  # the dataset's length, never len(loader)
        **label_count_metrics(site.label_counts()),
    }
    if local_norm is not None:
        local_norm.keep_and_restore()  # send the received norm values back unchanged
    # the shared part only: a method's personal parts stay in context.state
    return _reply(msg, site, metrics, method.shared(model.cpu()), cfg.update_encoding)


def _evaluate(msg: Message, context: Context) -> Message:
    cfg, site, model = _setup(msg, context)
    metrics = _defined(evaluate_split(model, site.val, pick_device(cfg.device)), "")
    metrics["num-examples"] = len(site.val)
    metrics.update(_personalized(cfg, site, model, context))
    return _reply(msg, site, metrics)


def _personalized(
    cfg: RunConfig, site: HospitalData, model: torch.nn.Module, context: Context
) -> dict[str, float]:
    """Metrics after this hospital's own adaptation; the adapted weights stay here."""
    device = pick_device(cfg.device)
    metrics: dict[str, float] = {}
    if cfg.local_norm and LocalNorm(model, context.state).use_local():
        metrics.update(prefixed(evaluate_split(model, site.val, device), "local_norm_"))
    personal = build_method(cfg).personal(model, site.train, context.state, device)
    if personal is not None:  # app/personalization: the hospital's own model
        metrics.update(
            prefixed(evaluate_split(personal, site.val, device), "personal_")
        )
    return metrics


def _budget_error(msg: Message, name: str, err: PrivacyBudgetExhausted) -> Message:
    log.warning("Hospital %s: %s", name, err)
    reason = ERROR_PREFIX.format(name=name) + str(err)
    return Message(Error(code=PRIVACY_BUDGET_CODE, reason=reason), reply_to=msg)


@_answered
def cohort_stats(msg: Message, context: Context) -> Message:
    """Release this hospital's Laplace-noised cohort statistics (once per run)."""
    from app.privacy.local_dp import hospital_budget

    route_to_flower()
    cfg = cache.run_config(context.run_id, context.run_config)
    site = cache.hospital(context.run_id, cfg, context.node_config)
    query = msg.content.config_records.get("config", ConfigRecord())
    info = check_contract(site, query)
    budget = hospital_budget(cfg, context.node_config) if cfg.dp == "local" else None
    try:
        record = release_reply(
            cfg,
            site,
            query,
            context.state,
            budget=float("inf") if budget is None else budget,
            num_classes=info.num_classes,
        )
    except PrivacyBudgetExhausted as err:
        return _budget_error(msg, site.name, err)
    return Message(
        content=named_content(site.name, {COHORT_STATS_RECORD: record}), reply_to=msg
    )


federated_stats = _answered(stats_reply)  # aggregates only (app/stats)


@_answered
def input_stats(msg: Message, context: Context) -> Message:
    """Send the count, sums and sums of squares of the model's computed input
    features over this hospital's training split (app/client/input_stats.py).
    """
    route_to_flower()
    cfg = cache.run_config(context.run_id, context.run_config)
    if cfg.dp != "none" or cfg.secure_aggregation:  # the run config refuses it too
        raise ValueError(
            "input statistics are exact and per hospital: not released under dp "
            "or secure-aggregation."
        )
    site = cache.hospital(context.run_id, cfg, context.node_config)
    check_contract(site, msg.content.config_records.get("config", ConfigRecord()))
    minimum = hospital_min_records(context.node_config)
    record = ConfigRecord(input_statistics(site.train.x, min_records=minimum))
    content = named_content(site.name, {INPUT_STATS_RECORD: record})
    return Message(content=content, reply_to=msg)


@_answered
def decision_stats(msg: Message, context: Context) -> Message:
    """Send the final model's validation score histograms and NLL sums."""
    cfg, site, model = _setup(msg, context)
    config = msg.content.config_records.get("config", ConfigRecord())
    probs = (
        predict_proba(model, site.val.x, pick_device(cfg.device))
        if len(site.val)
        else None
    )
    minimum = hospital_min_records(context.node_config)
    metrics = decision_metrics(site.val, probs, config, min_records=minimum)
    return _reply(msg, site, metrics)


def _recommendation(context: Context) -> ModuleType | None:
    """The recommendation task's handlers, for its runs only: they import pandas
    (~0.6 s of CPU per simulation actor and per deployed message) that no other
    task's ClientApp needs.
    """
    if context.run_config.get("task") != RECOMMENDATION_TASK:
        return None
    from app.recommendation import client as recommendation

    return recommendation


@_answered
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this hospital's training split."""
    if (recommendation := _recommendation(context)) is not None:
        return recommendation.train(msg, context)
    return _train(msg, context)


@_answered
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this hospital's held-out split."""
    if (recommendation := _recommendation(context)) is not None:
        return recommendation.evaluate(msg, context)
    return _evaluate(msg, context)
