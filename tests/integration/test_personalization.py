"""Transfer (init-model), head personalization and FedBN-style local norm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import MessageType, RecordDict
from support.federation import make_context, make_message, make_run_config

from app.client_app import app as client_app
from app.personalization import FINETUNE_PARTS
from data.spec import DatasetInfo, Split
from models import ModelSpec
from models.checkpoint import ModelFileError, save_model
from models.personalization import (
    HEAD_PARTS,
    LOCAL_NORM_STATE,
    LocalNorm,
    load_initial_weights,
    norm_keys,
    personalize_head,
)
from models.tabular import LogisticRegression, NormMLP
from models.training import TrainSettings, evaluate_split, make_loader, train_epochs

CPU = torch.device("cpu")


def _site(rng, n, threshold):
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > threshold).astype(np.int64)
    return Split(x, y)


def test_head_fine_tuning_does_not_lose_accuracy_under_a_constructed_shift():
    """Two hospitals whose decision boundaries differ (label shift): the global
    model is a compromise; each hospital's fine-tuned head is at least as good on
    its own held-out data, and clearly better at the shifted one."""
    rng = np.random.default_rng(0)
    a_train, a_val = _site(rng, 400, -0.8), _site(rng, 200, -0.8)
    b_train, b_val = _site(rng, 400, 0.8), _site(rng, 200, 0.8)
    pooled = Split(
        np.concatenate([a_train.x, b_train.x]), np.concatenate([a_train.y, b_train.y])
    )
    torch.manual_seed(0)
    model = LogisticRegression(2)
    settings = TrainSettings(epochs=20, batch_size=32, learning_rate=0.1, momentum=0.9)
    train_epochs(model, make_loader(pooled, 32, shuffle=True), settings, CPU)

    global_weights = {k: v.clone() for k, v in model.state_dict().items()}
    gains = []
    for train, val in ((a_train, a_val), (b_train, b_val)):
        before = evaluate_split(model, val, CPU)["accuracy"]
        tuned = personalize_head(
            model, train, TrainSettings(epochs=10, learning_rate=0.05), CPU
        )
        after = evaluate_split(tuned, val, CPU)["accuracy"]
        assert after >= before - 1e-9
        gains.append(after - before)
    assert max(gains) > 0.05
    for k, v in model.state_dict().items():  # the global model itself is untouched
        assert torch.equal(v, global_weights[k])


def test_bias_fine_tuning_moves_the_offsets_to_the_sites_prevalence():
    """``personalize-part = "bias"``: the head's weights stay the global model's;
    only the class offsets move, toward the hospital's (here higher) prevalence.
    """
    assert tuple(HEAD_PARTS) == FINETUNE_PARTS  # the key's choices = the registry
    rng = np.random.default_rng(1)
    train = _site(rng, 200, -0.8)  # ~80% positive where the global model says 50%
    torch.manual_seed(0)
    model = LogisticRegression(2)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[-2.0, -0.6], [2.0, 0.6]]))
        model.linear.bias.zero_()
    settings = TrainSettings(epochs=10, batch_size=16, learning_rate=0.1)
    tuned = personalize_head(model, train, settings, CPU, part="bias")
    assert torch.equal(tuned.linear.weight, model.linear.weight)
    shift = tuned.linear.bias[1] - tuned.linear.bias[0]
    assert shift > 1.0  # toward class 1: the boundary x0 + 0.3 x1 = -0.8
    before = evaluate_split(model, train, CPU)["accuracy"]
    assert evaluate_split(tuned, train, CPU)["accuracy"] > before + 0.05
    assert torch.count_nonzero(model.linear.bias) == 0  # the global copy untouched


def test_local_norm_keeps_own_params_and_returns_the_received_ones():
    model = NormMLP(3, 2, hidden=4, layers=2)
    keys = norm_keys(model)
    assert keys == ["net.1.weight", "net.1.bias", "net.4.weight", "net.4.bias"]
    received = {k: v.clone() for k, v in model.state_dict().items()}
    state = RecordDict()
    local = LocalNorm(model, state)
    assert not local.use_local()  # nothing local yet in the first round
    with torch.no_grad():
        for k in keys:
            model.state_dict()[k].add_(1.0)  # "training" moved the norm params
        model.net[0].weight.add_(1.0)
    local.keep_and_restore()
    sent = model.state_dict()
    for k in keys:  # what goes back is what came in ...
        assert torch.equal(sent[k], received[k])
    stored = state.array_records[LOCAL_NORM_STATE].to_torch_state_dict()
    for k in keys:  # ... and the hospital's own values stay in its state
        assert torch.equal(stored[k], received[k] + 1.0)
    assert not torch.equal(sent["net.0.weight"], received["net.0.weight"])
    fresh = NormMLP(3, 2, hidden=4, layers=2)
    assert LocalNorm(fresh, state).use_local()
    assert torch.equal(fresh.state_dict()["net.1.bias"], received["net.1.bias"] + 1.0)


def test_local_norm_needs_norm_layers():
    with pytest.raises(ValueError, match="mlp-norm"):
        LocalNorm(LogisticRegression(3), RecordDict())


def test_init_model_must_match_the_run(tmp_path):
    info = DatasetInfo(
        task="tabular", input_shape=(3,), num_classes=2, feature_names=("a", "b", "c")
    )
    spec = ModelSpec("logreg", {"in_features": 3, "num_classes": 2})
    path = tmp_path / "source.pt"
    weights = LogisticRegression(3).state_dict()
    save_model(path, weights, spec, info, run_config={}, preprocessing={})
    loaded = load_initial_weights(path, spec, info)
    assert torch.equal(loaded["linear.weight"], weights["linear.weight"])
    other = ModelSpec(
        "mlp", {"in_features": 3, "num_classes": 2, "hidden": 8, "layers": 1}
    )
    with pytest.raises(ModelFileError, match="this run builds 'mlp'"):
        load_initial_weights(path, other, info)
    renamed = DatasetInfo(
        task="tabular", input_shape=(3,), num_classes=2, feature_names=("a", "b", "z")
    )
    with pytest.raises(ModelFileError, match="trained on features"):
        load_initial_weights(path, spec, renamed)


def test_evaluate_handler_reports_before_and_after(tmp_path, task_identity):
    config = make_run_config(
        tmp_path,
        model="mlp-norm",
        **{
            "local-norm": True,
            "personalize-epochs": 2,
            "mlp-hidden": 8,
            "mlp-layers": 1,
        },
    )
    context = make_context(config)
    model = NormMLP(30, 2, hidden=8, layers=1)
    train_reply = client_app(make_message(model, MessageType.TRAIN), context)
    sent = train_reply.content["arrays"].to_torch_state_dict()
    for k in norm_keys(model):  # the hospital's trained norm params are not sent
        assert torch.equal(sent[k], model.state_dict()[k])
    assert LOCAL_NORM_STATE in context.state.array_records
    reply = client_app(make_message(model, MessageType.EVALUATE), context)
    metrics = next(iter(reply.content.metric_records.values()))
    for key in ("accuracy", "local_norm_accuracy", "personal_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert "arrays" not in reply.content.array_records  # nothing personal is sent
