"""Checks on one hospital's reply before it may enter an aggregate."""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

Reference = dict[str, tuple[int, ...]]


def reference_of(arrays: ArrayRecord) -> Reference:
    """Key -> shape of the global model sent out this round."""
    return {k: tuple(v.shape) for k, v in arrays.items()}


def reply_problem(
    content: RecordDict,
    reference: Reference,
    weight_key: str,
    *,
    check_arrays: bool = True,
) -> str | None:
    """Return why ``content`` must not be aggregated, or None when it is sound.

    A sound train reply holds exactly one ArrayRecord whose keys and shapes match
    the global model and whose values are all finite, and exactly one MetricRecord
    whose ``weight_key`` is a finite number > 0.
    """
    metrics = list(content.metric_records.values())
    if len(metrics) != 1:
        return f"expected one MetricRecord, found {len(metrics)}"
    weight = metrics[0].get(weight_key)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return f"metric '{weight_key}' missing or not a number"
    if not math.isfinite(weight) or weight <= 0:
        return f"metric '{weight_key}' must be a finite number > 0, got {weight}"
    for key, value in metrics[0].items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return f"metric '{key}' is not finite"
    if not check_arrays:
        return None
    records = list(content.array_records.values())
    if len(records) != 1:
        return f"expected one ArrayRecord, found {len(records)}"
    arrays = records[0]
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        return f"array keys differ from the model (missing {missing}, extra {extra})"
    for key, shape in reference.items():
        got = tuple(arrays[key].shape)
        if got != shape:
            return f"array '{key}' has shape {got}, expected {shape}"
    for key, array in arrays.items():
        values = array.numpy()
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"array '{key}' holds NaN or infinite values"
    return None


def dtypes_of(arrays: ArrayRecord) -> dict[str, np.dtype]:
    """Key -> dtype of the global model sent out this round."""
    return {k: v.numpy().dtype for k, v in arrays.items()}


def match_dtypes(arrays: ArrayRecord, dtypes: dict[str, np.dtype]) -> ArrayRecord:
    """Cast aggregated arrays back to the global model's dtypes.

    A weighted mean multiplies by Python floats, which turns integer buffers (e.g.
    BatchNorm's ``num_batches_tracked``) into float64; sent as is, the next round's
    model would no longer match its own state_dict and would cost 8 bytes per
    value on the wire. Integers are rounded, not truncated.
    """
    out = {}
    for key, array in arrays.items():
        values = array.numpy()
        want = dtypes.get(key, values.dtype)
        if values.dtype != want:
            if np.issubdtype(want, np.integer):
                values = np.rint(values)
            values = np.asarray(values.astype(want))  # a 0-d array stays an array
        out[key] = values
    return ArrayRecord({k: Array(v) for k, v in out.items()})
