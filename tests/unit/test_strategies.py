import logging
import re

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from models.training import proximal_term
from strategies import build_strategy
from strategies.fedavg import HOSPITAL_RECORD, MedFedAvg
from strategies.fedprox import MedFedProx

GLOBAL = {"w": np.zeros((2, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


class FakeGrid:
    def __init__(self, n):
        self.ids = list(range(101, 101 + n))

    def get_node_ids(self):
        return self.ids


def reply(node_id, arrays, weight, name=None, metrics=None):
    """A hospital's train reply, as the server receives it."""
    instruction = Message(
        content=RecordDict({"config": ConfigRecord()}),
        message_type=MessageType.TRAIN,
        dst_node_id=node_id,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": weight, **(metrics or {})}),
            HOSPITAL_RECORD: ConfigRecord({"name": name or f"h{node_id}"}),
        }
    )
    return Message(content=content, reply_to=instruction)


def prime(strategy, n=3):
    """Run configure_train so the strategy knows the global model's shapes."""
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    return list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(n)))


def full(value, shape):
    return np.full(shape, value, dtype=np.float32)


def test_fedavg_weighted_mean_by_num_examples(task_identity):
    strategy = MedFedAvg(min_hospitals=2)
    prime(strategy)
    replies = [
        reply(
            101,
            {"w": full(1.0, (2, 2)), "b": full(2.0, 2)},
            10,
            metrics={"train_loss": 1.0},
        ),
        reply(
            102,
            {"w": full(4.0, (2, 2)), "b": full(-1.0, 2)},
            30,
            metrics={"train_loss": 3.0},
        ),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # (10 * 1 + 30 * 4) / 40 = 3.25 ; (10 * 2 + 30 * -1) / 40 = -0.25
    np.testing.assert_allclose(arrays["w"].numpy(), full(3.25, (2, 2)))
    np.testing.assert_allclose(arrays["b"].numpy(), full(-0.25, 2))
    assert metrics["train_loss"] == pytest.approx(2.5)
    ledger = strategy.ledger.rounds[1]
    assert set(ledger["train"]) == {"h101", "h102"}


def test_metrics_missing_at_one_hospital_are_averaged_over_reporters(task_identity):
    strategy = MedFedAvg(min_hospitals=2)
    prime(strategy)
    replies = [
        reply(101, GLOBAL, 10, metrics={"val_auc": 0.8}),
        reply(102, GLOBAL, 30),  # e.g. single-class validation split: no AUC
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["val_auc"] == pytest.approx(0.8)


BAD_REPLIES = {
    "nan": ({"w": full(np.nan, (2, 2)), "b": full(0.0, 2)}, 10, "NaN or infinite"),
    "inf": ({"w": full(np.inf, (2, 2)), "b": full(0.0, 2)}, 10, "NaN or infinite"),
    "missing-key": ({"w": full(1.0, (2, 2))}, 10, "missing \\['b'\\]"),
    "extra-key": ({**GLOBAL, "z": full(1.0, 1)}, 10, "extra \\['z'\\]"),
    "wrong-shape": (
        {"w": full(1.0, (3, 2)), "b": full(0.0, 2)},
        10,
        "shape \\(3, 2\\)",
    ),
    "zero-weight": (GLOBAL, 0, "must be a finite number > 0"),
    "negative-weight": (GLOBAL, -5, "must be a finite number > 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_bad_reply_is_dropped_and_logged_with_hospital(case, caplog, task_identity):
    arrays, weight, reason = BAD_REPLIES[case]
    strategy = MedFedAvg(min_hospitals=1)  # one sound reply is enough to aggregate
    prime(strategy)
    good = reply(101, {"w": full(2.0, (2, 2)), "b": full(1.0, 2)}, 10, name="good")
    bad = reply(102, arrays, weight, name="bad-hospital")
    with caplog.at_level(logging.WARNING):
        result, _ = strategy.aggregate_train(1, [good, bad])
    np.testing.assert_allclose(result["w"].numpy(), full(2.0, (2, 2)))
    assert "bad-hospital" in caplog.text
    rejected = strategy.ledger.rounds[1]["rejected"]
    assert list(rejected) == ["bad-hospital"]
    assert re.search(reason, rejected["bad-hospital"]["reason"])


def test_error_reply_is_recorded_and_rest_aggregated(task_identity):
    strategy = MedFedAvg(min_hospitals=1)
    prime(strategy)
    instruction = Message(
        content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=103
    )
    failed = Message(Error(code=1, reason="boom"), reply_to=instruction)
    good = reply(101, GLOBAL, 5)
    arrays, _ = strategy.aggregate_train(1, [good, failed])
    assert arrays is not None
    assert strategy.ledger.rounds[1]["errors"]["node-103"]["reason"] == "boom"


def test_train_error_is_kept_when_evaluate_fails_too(task_identity):
    strategy = MedFedAvg(min_hospitals=1)
    prime(strategy)

    def failed(message_type, reason):
        instruction = Message(
            content=RecordDict(), message_type=message_type, dst_node_id=103
        )
        return Message(
            Error(code=1, reason=f"hospital h103: {reason}"), reply_to=instruction
        )

    strategy.aggregate_train(1, [reply(101, GLOBAL, 5), failed(MessageType.TRAIN, "A")])
    strategy.aggregate_evaluate(1, [failed(MessageType.EVALUATE, "B")])
    error = strategy.ledger.rounds[1]["errors"]["h103"]
    assert (error["phase"], error["reason"]) == ("train", "hospital h103: A")
    assert error["more"] == [{"phase": "evaluate", "reason": "hospital h103: B"}]


def test_round_with_too_few_valid_replies_keeps_model_and_says_so(
    caplog, task_identity
):
    strategy = MedFedAvg(min_hospitals=2)
    prime(strategy)
    bad = reply(101, {"w": full(np.nan, (2, 2)), "b": full(0.0, 2)}, 10)
    good = reply(102, GLOBAL, 10)
    with caplog.at_level(logging.ERROR):
        arrays, metrics = strategy.aggregate_train(1, [bad, good])
    assert arrays is None and metrics is None
    assert strategy.ledger.rounds[1]["skipped"] == (
        "1 sound training reply, fewer than min-hospitals=2"
    )
    assert "global model is unchanged" in caplog.text


def test_fedprox_sends_mu_and_validates_it(task_identity):
    strategy = build_strategy("fedprox", proximal_mu=0.3, min_hospitals=2)
    assert isinstance(strategy, MedFedProx)
    messages = prime(strategy)
    assert messages and all(m.content["config"]["proximal-mu"] == 0.3 for m in messages)
    with pytest.raises(ValueError, match="proximal-mu must be > 0"):
        MedFedProx(proximal_mu=0.0)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="Unknown strategy 'nope'"):
        build_strategy("nope")


def test_proximal_term_value_and_gradient():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    global_params = [torch.tensor([[0.0, 1.0]]), torch.tensor([0.5])]
    term = proximal_term(model, global_params, mu=0.2)
    # ||w - g||^2 = 1 + 1 + 0 = 2 ; (mu / 2) * 2 = 0.2
    assert term.item() == pytest.approx(0.2)
    term.backward()
    # d/dw (mu/2)||w-g||^2 = mu (w - g)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[0.2, 0.2]]))
    torch.testing.assert_close(model.bias.grad, torch.tensor([0.0]))


def test_reply_whose_arrays_cannot_be_decoded_is_dropped(task_identity):
    strategy = MedFedAvg(min_hospitals=1)
    prime(strategy)
    good = reply(101, {"w": full(2.0, (2, 2)), "b": full(1.0, 2)}, 10, name="good")
    bad = reply(102, GLOBAL, 10, name="garbled")
    w = bad.content["arrays"]["w"]
    bad.content["arrays"]["w"] = Array(
        dtype=w.dtype, shape=tuple(w.shape), stype=w.stype, data=b"\x93NUMPY junk"
    )
    result, _ = strategy.aggregate_train(1, [good, bad])
    np.testing.assert_allclose(result["w"].numpy(), full(2.0, (2, 2)))
    reason = strategy.ledger.rounds[1]["rejected"]["garbled"]["reason"]
    assert reason.startswith("arrays cannot be decoded")


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_server_optimizers_keep_untrained_arrays_as_sent(task_identity, name):
    # "b" is a buffer (e.g. the statistics of `shape`): every hospital returns it
    # as sent, yet the weighted mean of equal float32 values can differ in the
    # last bit, which an adaptive step would scale up to about eta.
    rng = np.random.default_rng(0)
    sent = {
        "w": rng.normal(size=(4, 4)).astype(np.float32),
        "b": rng.normal(size=64).astype(np.float32),
    }
    weights = (13, 17, 11)
    mean = sum(sent["b"] * (n / sum(weights)) for n in weights)
    assert (mean != sent["b"]).any()  # the rounding this test is about

    def run(fixed):
        strategy = build_strategy(
            name,
            min_hospitals=3,
            eta=0.01,
            beta_1=0.9,
            beta_2=0.99,
            tau=1e-8,
            fixed_keys=fixed,
        )
        arrays = ArrayRecord({k: Array(v) for k, v in sent.items()})
        list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(3)))
        replies = [
            reply(101 + i, {"w": sent["w"] + 0.1 * (i + 1), "b": sent["b"]}, n)
            for i, n in enumerate(weights)
        ]
        out, _ = strategy.aggregate_train(1, replies)
        return {k: a.numpy() for k, a in out.items()}

    kept, stepped = run(["b"]), run([])
    np.testing.assert_array_equal(kept["b"], sent["b"])
    assert np.abs(stepped["b"] - sent["b"]).max() > 1e-3  # the drift, unguarded
    np.testing.assert_array_equal(kept["w"], stepped["w"])  # parameters: as before
    assert np.abs(kept["w"] - sent["w"]).min() > 0
