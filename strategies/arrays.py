"""A hospital reply's arrays decoded once, for screening, the anomaly report and
aggregation alike.

Why: Flower's ``Array.numpy()`` runs ``np.load`` (a header parsed with
``ast.literal_eval``) on every call, and the server used to decode each reply's
arrays three times (screening, the anomaly report, Flower's FedAvg), ~0.35 ms per
array and call: at 100 hospitals most of the server's share of a round.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

NUMPY_STYPE = "numpy.ndarray"  # Flower's stype for arrays saved with np.save


@lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The header ``np.save`` writes for a C-ordered ``dtype`` array of ``shape``."""
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def values_of(array: Array) -> np.ndarray:
    """``array.numpy()``, read-only, without ``np.load`` where the bytes allow.

    The fast path takes only bytes that are exactly ``np.save``'s output for the
    array's declared dtype and shape (the same header, then exactly as many bytes
    as the values need), so it returns what ``np.load`` would; anything else
    (another header, a size mismatch, an unknown dtype) goes through
    ``array.numpy()`` with its own checks and errors.
    """
    if array.stype == NUMPY_STYPE:
        try:
            dtype = np.dtype(array.dtype)
            shape = tuple(int(d) for d in array.shape)
            header = _npy_header(array.dtype, shape)
        except (TypeError, ValueError):
            header = b""
        data = array.data
        if (
            header
            and not dtype.hasobject
            and len(data) == len(header) + dtype.itemsize * int(np.prod(shape))
            and data.startswith(header)
        ):
            return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(shape)
    values = array.numpy()
    values.flags.writeable = False
    return values


class DecodedArray(Array):
    """A Flower ``Array`` (the same bytes) whose ``numpy()`` returns values decoded
    once. The values are read-only: every user builds new arrays from them.
    """

    def __init__(self, array: Array) -> None:
        super().__init__(
            dtype=array.dtype,
            shape=tuple(array.shape),
            stype=array.stype,
            data=array.data,
        )
        self.__dict__["_values"] = values_of(array)

    def numpy(self) -> np.ndarray:
        """The decoded values (read-only, shared by every call)."""
        return self.__dict__["_values"]  # type: ignore[no-any-return]


def decoded(record: ArrayRecord) -> ArrayRecord:
    """``record`` with every array decoded once (:class:`DecodedArray`)."""
    out = ArrayRecord()  # item by item: ArrayRecord(dict) would copy plain Arrays
    for key, value in record.items():
        out[key] = value if isinstance(value, DecodedArray) else DecodedArray(value)
    return out


def torch_state_dict(record: ArrayRecord) -> OrderedDict[str, Any]:
    """``record.to_torch_state_dict()`` without ``np.load`` where the bytes allow
    (:func:`values_of`); the tensors own writable copies of the values.
    """
    import torch

    return OrderedDict(
        (key, torch.from_numpy(values_of(value).copy()))
        for key, value in record.items()
    )
