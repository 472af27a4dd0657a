"""How model arrays travel: float32 as they are, float16, or 8 bits per value.

Run config ``update-encoding`` chooses one for both directions (the server's
instruction and the hospital's reply); this module is the one codec both sides
use. An encoded ArrayRecord holds

- every non-float array (e.g. BatchNorm's ``num_batches_tracked``) unchanged under
  its own key, so integer buffers stay exact;
- all float arrays, sorted by key, flattened into one array under ``VALUES``:
  float16, or uint8 with each tensor's ``(low, step)`` in ``RANGES`` (affine 8-bit
  quantisation, per tensor: ``x ~ low + step * q`` with ``step = (max - min) / 255``,
  error at most ``step / 2``).

Packing into one array, stored as raw little-endian bytes (stype ``RAW``) rather
than Flower's ``.npy`` form, matters for small models: Flower serialises every
numpy array with a 128-byte ``.npy`` header plus metadata, which for a 30-feature
logistic regression (62 values) outweighs the values themselves. The receiver
already knows the model's layout (the server its global model, a hospital the model
it builds), so only the values travel, and :func:`decode` checks that their count fits.

Decoding restores each float array in the layout's dtype; nothing downstream (reply
screening, aggregation, ``load_state_dict``) ever sees an encoded record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord

# Reserved keys: ':' never appears in a torch state_dict key.
VALUES = "medflower:encoded-values"
RANGES = "medflower:int8-ranges"
PLAIN = "float32"
RAW = "medflower.raw-le"  # Array stype: the values' little-endian bytes, no header

# Key -> (shape, dtype) of the model a record must fit.
Layout = Mapping[str, tuple[tuple[int, ...], np.dtype]]


class EncodingError(ValueError):
    """An encoded record does not fit the receiver's model."""


@dataclass(frozen=True)
class Codec:
    """Packs float tensors into one array and back.

    ``pack(tensors) -> (values, ranges or None)``;
    ``unpack(values, ranges, sizes) -> flat float64 tensors``.
    """

    pack: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray | None]]
    unpack: Callable[[np.ndarray, np.ndarray | None, list[int]], list[np.ndarray]]
    bits: int


def _split(flat: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []


def _pack_float16(tensors: list[np.ndarray]) -> tuple[np.ndarray, None]:
    flat = [t.ravel() for t in tensors]
    return np.concatenate(flat).astype(np.float16) if flat else np.zeros(
        0, np.float16
    ), None


def _unpack_float16(
    values: np.ndarray, ranges: np.ndarray | None, sizes: list[int]
) -> list[np.ndarray]:
    del ranges
    if values.dtype != np.float16:
        raise EncodingError(f"float16 values expected, got {values.dtype}")
    return _split(values.astype(np.float64), sizes)


def _pack_int8(tensors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ranges = np.zeros((len(tensors), 2), dtype=np.float32)
    codes = []
    for i, tensor in enumerate(tensors):
        x = tensor.astype(np.float64).ravel()
        low = float(x.min()) if x.size else 0.0
        high = float(x.max()) if x.size else 0.0
        step = (high - low) / 255.0 if high > low else 1.0
        # A non-finite value makes low/step non-finite: decoded, the reply holds
        # NaN and the server's screening drops it, as it would the plain reply.
        with np.errstate(invalid="ignore"):
            q = np.clip(np.rint((x - low) / step), 0, 255)
        codes.append(np.nan_to_num(q).astype(np.uint8))
        ranges[i] = (low, step)
    flat = np.concatenate(codes) if codes else np.zeros(0, dtype=np.uint8)
    return flat, ranges


def _unpack_int8(
    values: np.ndarray, ranges: np.ndarray | None, sizes: list[int]
) -> list[np.ndarray]:
    if values.dtype != np.uint8:
        raise EncodingError(f"8-bit codes expected, got {values.dtype}")
    if ranges is None or ranges.shape != (len(sizes), 2):
        got = None if ranges is None else ranges.shape
        raise EncodingError(
            f"array '{RANGES}' must hold ({len(sizes)}, 2) ranges, got {got}"
        )
    parts = _split(values.astype(np.float64), sizes)
    r = ranges.astype(np.float64)
    return [r[i, 0] + r[i, 1] * part for i, part in enumerate(parts)]


CODECS: dict[str, Codec] = {
    "float16": Codec(_pack_float16, _unpack_float16, bits=16),
    "int8": Codec(_pack_int8, _unpack_int8, bits=8),
}
ENCODINGS: tuple[str, ...] = (PLAIN, *CODECS)


def layout_of(arrays: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Key -> (shape, dtype) of an ArrayRecord, a torch state_dict or numpy arrays."""
    out = {}
    for key, value in arrays.items():
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        # a Flower Array names its numpy dtype and shape without deserialising
        out[key] = (tuple(value.shape), np.dtype(value.dtype))
    return out


def _raw(values: np.ndarray) -> Array:
    from flwr.app import Array

    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return Array(
        dtype=values.dtype.name,
        shape=tuple(int(d) for d in values.shape),
        stype=RAW,
        data=values.tobytes(),
    )


def _from_raw(array: Array, key: str) -> np.ndarray:
    if array.stype != RAW or array.dtype not in ("float16", "float32", "uint8"):
        raise EncodingError(
            f"array '{key}' is not a packed encoding ({array.stype}, {array.dtype})"
        )
    dtype = np.dtype(array.dtype).newbyteorder("<")
    count = int(np.prod(array.shape, dtype=np.int64))
    if len(array.data) != count * dtype.itemsize:
        raise EncodingError(f"array '{key}' holds {len(array.data)} bytes, not {count}")
    return np.frombuffer(array.data, dtype=dtype).reshape(array.shape)


def _codec(encoding: str) -> Codec:
    try:
        return CODECS[encoding]
    except KeyError:
        raise ValueError(
            f"update-encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}"
        ) from None


def _is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def encode(arrays: ArrayRecord, encoding: str) -> ArrayRecord:
    """``arrays`` as they travel under ``encoding`` (float32: unchanged)."""
    if encoding == PLAIN:
        return arrays
    from flwr.app import Array, ArrayRecord

    codec = _codec(encoding)
    numpy = {key: array.numpy() for key, array in arrays.items()}
    floats = sorted(k for k, v in numpy.items() if _is_float(v.dtype))
    values, ranges = codec.pack([numpy[k] for k in floats])
    out = {k: Array(v) for k, v in numpy.items() if not _is_float(v.dtype)}
    out[VALUES] = _raw(values)
    if ranges is not None:
        out[RANGES] = _raw(ranges)
    return ArrayRecord(out)


def decode(arrays: ArrayRecord, encoding: str, layout: Layout) -> ArrayRecord:
    """The plain arrays of a record encoded with ``encoding``, in ``layout``.

    Float arrays are rebuilt in the layout's shapes and dtypes; other arrays are
    passed through as received (the caller's checks name a missing or extra key).
    Raises :class:`EncodingError` when the record does not fit the layout.
    """
    if encoding == PLAIN:
        return arrays
    from flwr.app import Array, ArrayRecord

    codec = _codec(encoding)
    if VALUES not in arrays:
        raise EncodingError(
            f"update-encoding='{encoding}' but the arrays are not encoded "
            f"(no '{VALUES}'): the sender runs another update-encoding"
        )
    floats = sorted(k for k, (_, dtype) in layout.items() if _is_float(dtype))
    sizes = [int(np.prod(layout[k][0], dtype=np.int64)) for k in floats]
    values = _from_raw(arrays[VALUES], VALUES)
    if values.ndim != 1 or values.size != sum(sizes):
        raise EncodingError(
            f"the encoded arrays hold {values.size} values, the model has {sum(sizes)}"
        )
    ranges = _from_raw(arrays[RANGES], RANGES) if RANGES in arrays else None
    flat = dict(zip(floats, codec.unpack(values, ranges, sizes), strict=True))
    out = {}
    for key, (shape, dtype) in layout.items():
        if key in flat:
            out[key] = Array(flat[key].reshape(shape).astype(dtype))
        elif key in arrays:
            out[key] = arrays[key]
    for key in arrays:  # extra keys stay visible to the caller's checks
        if key not in out and key not in (VALUES, RANGES):
            out[key] = arrays[key]
    return ArrayRecord(out)
