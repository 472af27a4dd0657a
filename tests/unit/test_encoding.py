"""update-encoding: the float16 / int8 codec, the server's screening of encoded
replies and the ClientApp's encoded instruction and reply."""

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_to_proto
from support.federation import make_context, make_message, make_run_config

from app.client_app import app as client_app
from app.config import ConfigError, RunConfig
from strategies.encoding import (
    RANGES,
    VALUES,
    EncodingError,
    decode,
    encode,
    layout_of,
)
from strategies.fedavg import HOSPITAL_RECORD, MedFedAvg


class FakeGrid:
    def __init__(self, n):
        self.ids = list(range(101, 101 + n))

    def get_node_ids(self):
        return self.ids


def reply(node_id: int, arrays: ArrayRecord, weight: int) -> Message:
    """A hospital's train reply, as the server receives it."""
    instruction = Message(
        content=RecordDict({"config": ConfigRecord()}),
        message_type=MessageType.TRAIN,
        dst_node_id=node_id,
    )
    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": weight}),
            HOSPITAL_RECORD: ConfigRecord({"name": f"h{node_id}"}),
        }
    )
    return Message(content=content, reply_to=instruction)


def bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 2)
    )


def state_record(model: torch.nn.Module) -> ArrayRecord:
    model.train()
    model(torch.randn(8, 30))  # moves BatchNorm's running stats and its counter
    return ArrayRecord(model.state_dict())


@pytest.mark.parametrize(
    "encoding, tolerance",
    [("float16", lambda x: 2.0**-11 * np.abs(x) + 1e-7), ("int8", None)],
)
def test_round_trip_is_close_and_keeps_integer_buffers_exact(encoding, tolerance):
    model = bn_net()
    plain = state_record(model)
    sent = encode(plain, encoding)
    assert VALUES in sent and ("0.weight" not in sent)
    # the batch counter travels as itself, in its own dtype
    assert sent["1.num_batches_tracked"].numpy().dtype == np.int64
    back = decode(sent, encoding, layout_of(model.state_dict()))
    assert list(back) == list(plain)  # every key, in the model's order
    for key, array in plain.items():
        want, got = array.numpy(), back[key].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.kind != "f":
            np.testing.assert_array_equal(got, want)
            continue
        if tolerance is None:  # int8: half a step of the tensor's own range
            step = (want.max() - want.min()) / 255
            bound = step / 2 * (1 + 1e-4) + 1e-7
        else:
            bound = tolerance(want)
        assert np.all(np.abs(got - want) <= bound), key


@pytest.mark.parametrize("encoding, ceiling", [("float16", 0.5), ("int8", 0.4)])
def test_encoded_logistic_regression_is_at_most_half_the_float32_bytes(
    task_identity, encoding, ceiling
):
    # 30 features, 2 classes: per-array headers would outweigh the values if each
    # tensor travelled on its own; packed, the ratio holds even for this model.
    model = torch.nn.Linear(30, 2)
    plain = ArrayRecord(model.state_dict())

    def wire_bytes(arrays: ArrayRecord) -> int:
        msg = Message(
            RecordDict({"arrays": arrays}), dst_node_id=1, message_type="train"
        )
        return message_to_proto(msg).ByteSize()

    assert wire_bytes(encode(plain, encoding)) / wire_bytes(plain) <= ceiling


def test_decode_refuses_what_does_not_fit_the_model():
    model = bn_net()
    layout = layout_of(model.state_dict())
    sent = encode(state_record(model), "int8")
    other = layout_of(torch.nn.Linear(30, 2).state_dict())
    with pytest.raises(EncodingError, match=r"hold \d+ values, the model has 62"):
        decode(sent, "int8", other)
    with pytest.raises(EncodingError, match="not encoded"):
        decode(ArrayRecord(model.state_dict()), "int8", layout)
    no_ranges = ArrayRecord({k: v for k, v in sent.items() if k != RANGES})
    with pytest.raises(EncodingError, match=RANGES):
        decode(no_ranges, "int8", layout)
    with pytest.raises(EncodingError, match="float16 values expected"):
        decode(sent, "float16", layout)


def test_constant_and_non_finite_tensors():
    arrays = ArrayRecord(
        {
            "zeros": Array(np.zeros(4, dtype=np.float32)),
            "bad": Array(np.array([1.0, np.nan], dtype=np.float32)),
        }
    )
    layout = layout_of(arrays)
    back = decode(encode(arrays, "int8"), "int8", layout)
    np.testing.assert_array_equal(back["zeros"].numpy(), np.zeros(4))
    assert not np.isfinite(back["bad"].numpy()).all()  # screening drops such a reply


def test_server_encodes_instructions_and_screens_decoded_replies(task_identity):
    glob = {"w": np.full((2, 2), 0.5, np.float32), "n": np.array(3, np.int64)}
    strategy = MedFedAvg(min_hospitals=2, update_encoding="int8")
    arrays = ArrayRecord({k: Array(v) for k, v in glob.items()})
    sent = list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(3)))
    content = sent[0].content["arrays"]
    assert set(content) == {"n", VALUES, RANGES}
    layout = layout_of(arrays)

    def encoded(value):
        plain = ArrayRecord(
            {"w": Array(np.full((2, 2), value, np.float32)), "n": Array(glob["n"])}
        )
        return encode(plain, "int8")

    plain = ArrayRecord({k: Array(v) for k, v in glob.items()})
    replies = [
        reply(101, encoded(1.0), 10),
        reply(102, encoded(3.0), 30),
        reply(103, plain, 10),  # a plain reply where int8 is expected: dropped
    ]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None
    np.testing.assert_allclose(new["w"].numpy(), np.full((2, 2), 2.5), atol=1e-6)
    assert new["n"].numpy().dtype == np.int64 and int(new["n"].numpy()) == 3
    rejected = strategy.ledger.rounds[1]["rejected"]
    assert list(rejected) == ["h103"]
    assert "update-encoding='int8'" in rejected["h103"]["reason"]
    assert layout == layout_of(arrays)


def test_client_decodes_the_instruction_and_encodes_its_reply(tmp_path, task_identity):
    config = make_run_config(tmp_path, **{"update-encoding": "float16"})
    cfg = RunConfig.from_run_config(config)
    from app.client.hospital import model_spec
    from data.registry import get_dataset

    info = get_dataset(cfg.data_spec()).info()
    model = model_spec(cfg, info).build()
    msg = make_message(model)
    msg.content["arrays"] = encode(msg.content["arrays"], "float16")
    out = client_app(msg, make_context(config))
    assert not out.has_error(), out.error.reason if out.has_error() else ""
    returned = out.content["arrays"]
    assert returned[VALUES].dtype == "float16"
    trained = decode(returned, "float16", layout_of(model.state_dict()))
    assert set(trained) == set(model.state_dict())
    evaluated = make_message(model, MessageType.EVALUATE)
    evaluated.content["arrays"] = encode(evaluated.content["arrays"], "float16")
    out = client_app(evaluated, make_context(config))
    assert not out.has_error() and "accuracy" in out.content["metrics"]


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"secure-aggregation": True}, "secure-aggregation"),
        ({"poison-fraction": 0.2}, "poison-fraction"),
    ],
)
def test_compressed_encoding_refused_with_secure_aggregation_by_name(
    tmp_path, overrides, key
):
    with pytest.raises(ConfigError, match=f"update-encoding='int8'.*'{key}'"):
        RunConfig.from_run_config(
            make_run_config(tmp_path, **{"update-encoding": "int8", **overrides})
        )
    with pytest.raises(ConfigError, match="update-encoding"):
        RunConfig.from_run_config(make_run_config(tmp_path, **{"update-encoding": "x"}))
