"""A reply's arrays decoded once (strategies/arrays.py) equal Flower's np.load."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from strategies.arrays import DecodedArray, decoded, torch_state_dict, values_of

SHAPES = [(), (0,), (1, 62), (3, 4, 5)]
DTYPES = ["float32", "float64", "float16", "int64", "uint8", "bool", ">f4"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_equal_flower_numpy_for_every_shape(dtype):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        array = Array(np.asarray(rng.normal(size=shape) * 10).astype(dtype))
        got, want = values_of(array), array.numpy()
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable


def test_bytes_that_are_not_np_saves_output_go_through_np_load():
    plain = Array(np.arange(4, dtype=np.float32))
    fortran = Array(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
    np.testing.assert_array_equal(values_of(fortran), fortran.numpy())
    # a declared dtype that differs from the header: np.load's answer, as before
    lying = Array(dtype="float64", shape=(4,), stype=plain.stype, data=plain.data)
    np.testing.assert_array_equal(values_of(lying), plain.numpy())
    truncated = Array(
        dtype="float32", shape=(4,), stype=plain.stype, data=plain.data[:-4]
    )
    with pytest.raises(ValueError):
        values_of(truncated)


def test_decoded_record_keeps_bytes_and_decodes_once():
    record = ArrayRecord({"w": Array(np.ones((2, 3), dtype=np.float32))})
    out = decoded(record)
    assert isinstance(out["w"], DecodedArray)
    assert out["w"].data == record["w"].data and out["w"].shape == (2, 3)
    assert out["w"].numpy() is out["w"].numpy()  # no second decode
    assert decoded(out)["w"] is out["w"]
    with pytest.raises(ValueError):
        out["w"].numpy()[0, 0] = 2.0  # shared values are read-only
    state = torch_state_dict(record)
    assert (
        torch.equal(state["w"], torch.ones(2, 3)) and state["w"].dtype == torch.float32
    )
    state["w"] += 1  # the tensors own their values
    assert record["w"].numpy()[0, 0] == 1.0
