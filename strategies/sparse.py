"""Sparse row updates: a hospital sends only the item rows it changed.

A recommender's item tables have one row per catalogue item; a site's round of
training changes only the rows of the items it touched (its patients' items and
the negatives it drew). :func:`encode` replaces such a table ``K`` by two arrays,
``K@rows`` (int64 row indices) and ``K@values`` (those rows); the server's
screening calls :func:`decode` before anything else looks at the reply, filling
the other rows from the global model the hospital received. Because those rows
are exactly the received ones, decoding is lossless: the aggregate is the one a
dense reply would give. Under DP (noise touches every row) and secure
aggregation (the server must sum equal shapes) replies stay dense.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

ROWS, VALUES = "@rows", "@values"


def changed_rows(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``new`` that differ from ``old`` (sorted)."""
    flat_new = new.reshape(len(new), -1)
    flat_old = old.reshape(len(old), -1)
    return np.flatnonzero((flat_new != flat_old).any(axis=1)).astype(np.int64)


def encode(
    arrays: Mapping[str, np.ndarray],
    received: Mapping[str, np.ndarray],
    sparse_keys: Iterable[str],
) -> ArrayRecord:
    """An ArrayRecord with each of ``sparse_keys`` reduced to its changed rows."""
    sparse = set(sparse_keys)
    out: dict[str, Array] = {}
    for key, value in arrays.items():
        if key not in sparse:
            out[key] = Array(np.ascontiguousarray(value))
            continue
        rows = changed_rows(value, received[key])
        out[key + ROWS] = Array(rows)
        out[key + VALUES] = Array(np.ascontiguousarray(value[rows]))
    return ArrayRecord(out)


def is_sparse(arrays: ArrayRecord) -> bool:
    return any(key.endswith(ROWS) for key in arrays)


def decode(
    arrays: ArrayRecord, global_arrays: Mapping[str, np.ndarray]
) -> tuple[ArrayRecord | None, str | None]:
    """The dense ArrayRecord of a sparse reply, or ``(None, why it is unsound)``."""
    out: dict[str, Array] = {}
    for key in arrays:
        if key.endswith(VALUES):
            continue
        if not key.endswith(ROWS):
            out[key] = arrays[key]
            continue
        base = key[: -len(ROWS)]
        dense, problem = _fill(base, arrays, global_arrays)
        if problem is not None:
            return None, problem
        out[base] = Array(dense)
    orphans = [
        k
        for k in arrays
        if k.endswith(VALUES) and k[: -len(VALUES)] + ROWS not in arrays
    ]
    if orphans:
        return None, f"sparse values without row indices: {orphans}"
    return ArrayRecord(out), None


def _fill(
    base: str, arrays: ArrayRecord, global_arrays: Mapping[str, np.ndarray]
) -> tuple[np.ndarray | None, str | None]:
    """The global table ``base`` with the reply's rows written in."""
    if base not in global_arrays:
        return None, f"sparse array '{base}' is not in the model"
    if base + VALUES not in arrays:
        return None, f"sparse array '{base}' has row indices but no values"
    table = global_arrays[base]
    rows = arrays[base + ROWS].numpy()
    values = arrays[base + VALUES].numpy()
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        return None, f"row indices of '{base}' must be a 1-D integer array"
    if len(rows) and (rows.min() < 0 or rows.max() >= len(table)):
        return None, f"row indices of '{base}' fall outside 0..{len(table) - 1}"
    if len(np.unique(rows)) != len(rows):
        return None, f"row indices of '{base}' repeat"
    if values.shape != (len(rows), *table.shape[1:]):
        return None, (
            f"sparse values of '{base}' have shape {values.shape}, expected "
            f"{(len(rows), *table.shape[1:])}"
        )
    dense = table.copy()
    dense[rows] = values.astype(table.dtype, copy=False)
    return dense, None
