"""Personalised FL (app/personalization): what stays at a hospital, what is sent."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from flwr.app import ArrayRecord, MessageType
from support.federation import make_context, make_message, make_run_config

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from app.personalization.base import STATE_PREFIX, head_keys
from models.fenda import fenda_from, headless
from models.tabular import TabularMLP
from scripts.benchmarks.federation import federate
from scripts.harness.inprocess import full_run_config

SMALL_MLP = {"model": "mlp", "mlp-hidden": 8, "mlp-layers": 1}


def _round(model, context, server_round):
    msg = make_message(model, MessageType.TRAIN, {"server-round": server_round})
    reply = client_app(msg, context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply.content["arrays"].to_torch_state_dict()


@pytest.mark.parametrize("method", ["ditto", "apfl", "fedrep", "fenda"])
def test_personal_state_survives_rounds_and_is_never_sent(
    tmp_path, task_identity, method
):
    context = make_context(
        make_run_config(tmp_path, personalization=method, **SMALL_MLP)
    )
    torch.manual_seed(0)
    model = TabularMLP(30, 2, hidden=8, layers=1)
    keys = set(model.state_dict())
    local = head_keys(model) if method in ("fedrep", "fenda") else set()

    sent = _round(model, context, 1)
    record = STATE_PREFIX + method
    first = {
        k: v.clone()
        for k, v in context.state.array_records[record].to_torch_state_dict().items()
    }
    assert set(sent) == keys - local  # the shared part only
    for k, v in sent.items():
        assert v.shape == model.state_dict()[k].shape
    second = _round(model, context, 2)  # the same global model again
    kept = context.state.array_records[record].to_torch_state_dict()
    assert set(kept) == set(first)
    # the personal part trained on from where round 1 left it: different from
    # round 1's, and the two global updates (same start) differ only by seed
    assert any(not torch.equal(kept[k], first[k]) for k in first)
    assert set(second) == set(sent)

    reply = client_app(make_message(model, MessageType.EVALUATE), context)
    metrics = next(iter(reply.content.metric_records.values()))
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 0.0 <= metrics["personal_accuracy"] <= 1.0
    assert not reply.content.array_records  # evaluation sends no arrays


def _ditto_round(tmp_path, model, ditto_lambda, personal):
    config = make_run_config(
        tmp_path, personalization="ditto", **{"ditto-lambda": ditto_lambda}, **SMALL_MLP
    )
    context = make_context(config)
    context.state[STATE_PREFIX + "ditto"] = ArrayRecord(personal)
    sent = _round(model, context, 1)
    kept = context.state.array_records[STATE_PREFIX + "ditto"].to_torch_state_dict()
    return sent, kept


def test_ditto_sends_the_plain_update_and_pulls_the_personal_model_to_the_global(
    tmp_path, task_identity
):
    torch.manual_seed(0)
    model = TabularMLP(30, 2, hidden=8, layers=1)
    received = model.state_dict()
    plain = _round(model, make_context(make_run_config(tmp_path, **SMALL_MLP)), 1)
    far = OrderedDict((k, v + 3.0) for k, v in received.items())  # a distant personal
    sent, pulled = _ditto_round(tmp_path, model, 5.0, far)
    _, free = _ditto_round(tmp_path, model, 0.0, far)
    for k in plain:  # the global update is FedAvg's, untouched by the personal one
        assert torch.allclose(sent[k], plain[k])

    def distance(weights):
        return sum(float(((weights[k] - received[k]) ** 2).sum()) for k in received)

    # the proximal term anchors the personal model to the received global weights
    # (not to its own starting point): it moves toward them, unlike without it
    assert distance(pulled) < 0.7 * distance(far)
    assert distance(pulled) < 0.7 * distance(free)


def test_fenda_network_shapes():
    model = TabularMLP(5, 3, hidden=7, layers=2)
    body = headless(model)
    assert set(body.state_dict()) == set(model.state_dict()) - head_keys(model)
    net = fenda_from(model)
    x = torch.randn(4, 5)
    assert net.global_extractor(x).shape == (4, 7)
    assert net.local_extractor(x).shape == (4, 7)
    assert (net.head.in_features, net.head.out_features) == (14, 3)
    assert net(x).shape == (4, 3)
    # the global extractor's weights load back into the federation's model
    model.load_state_dict(net.global_extractor.state_dict(), strict=False)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"personalization": "finetune"}, "personalize-epochs"),
        ({"personalization": "ditto", "personalize-epochs": 3}, "personalize-epochs"),
        ({"personalization": "apfl", "local-norm": True}, "local-norm"),
        ({"personalization": "fedrep", "model": "logreg"}, "model"),
        (
            {"personalization": "fenda", **SMALL_MLP, "secure-aggregation": True},
            "secure-aggregation",
        ),
        (
            {"personalization": "fedrep", **SMALL_MLP, "update-encoding": "int8"},
            "update-encoding",
        ),
        (
            {"personalization": "ditto", "dp": "local", "dp-noise-multiplier": 1.0},
            "personalization",
        ),
        ({"personalization": "ditto", "task": "recommendation"}, "personalization"),
        ({"personalize-part": "bias"}, "personalize-part"),  # nothing to fine-tune
    ],
)
def test_refused_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        RunConfig.from_run_config(full_run_config(**overrides))


def test_fedrep_federation_keeps_the_server_head_and_scores_personal_models(
    tmp_path,
):
    config = {
        **SMALL_MLP,
        "personalization": "fedrep",
        "num-server-rounds": 2,
        "fraction-evaluate": 1.0,
        "seed": 3,
    }
    run = federate(config, 2)
    torch.manual_seed(3)  # the server's initial model (app/server/federation.build)
    initial = TabularMLP(30, 2, hidden=8, layers=1).state_dict()
    final = run.model.state_dict()
    for k in head_keys(run.model):  # filled from the global model, never averaged
        assert torch.equal(final[k], initial[k])
    assert any(not torch.equal(final[k], initial[k]) for k in final)
    for metrics in run.last_evaluations().values():
        assert 0.5 < metrics["personal_accuracy"] <= 1.0


def test_pooled_personal_weights_hospitals_by_their_test_rows():
    from scripts.benchmarks.personalization import pooled_personal

    evaluations = {
        "a": {"personal_accuracy": 1.0, "num-examples": 30},
        "b": {"personal_accuracy": 0.5, "num-examples": 10},
    }
    out = pooled_personal(evaluations, "personal_accuracy")
    assert out == {"a": 1.0, "b": 0.5, "pooled": pytest.approx(35 / 40)}
