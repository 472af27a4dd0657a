"""Per-round anomaly report: each hospital's update size and direction.

An update is ``w_hospital - w_global``. Its cosine similarity to the coordinate-wise
median update says whether it points where most hospitals go; a poisoned or broken
site shows a negative cosine or a norm far above the others'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord

# A hospital is flagged when its update points away from the median update or is
# this many times longer than the median hospital's update.
NORM_RATIO_FLAG = 3.0


def anomaly_report(
    global_arrays: Mapping[str, np.ndarray],
    updates: Sequence[tuple[str, ArrayRecord]],
) -> dict[str, object]:
    """Norm of each hospital's update and its cosine similarity to the median update.

    Computed one array at a time, so memory stays at ``hospitals x largest layer``.
    Integer buffers (e.g. counters) are left out.

    Returns
    -------
    dict
        ``{"hospitals": {name: {"update_norm", "cosine_to_median", "flagged"}},
        "median_update_norm": float}``.
    """
    if not updates:
        return {"hospitals": {}, "median_update_norm": 0.0}
    n = len(updates)
    sq_norm = np.zeros(n)
    dot = np.zeros(n)
    median_sq = 0.0
    for key, base in global_arrays.items():
        if base.dtype.kind != "f":
            continue
        g = base.astype(np.float64).ravel()
        deltas = np.stack(
            [rec[key].numpy().astype(np.float64).ravel() - g for _, rec in updates]
        )
        median = np.median(deltas, axis=0)
        sq_norm += np.einsum("ij,ij->i", deltas, deltas)
        dot += deltas @ median
        median_sq += float(median @ median)
    norms = np.sqrt(sq_norm)
    median_norm = float(np.median(norms))
    hospitals: dict[str, dict[str, object]] = {}
    for i, (name, _) in enumerate(updates):
        denom = norms[i] * np.sqrt(median_sq)
        cosine = float(dot[i] / denom) if denom > 0 else float("nan")
        flagged = bool(
            cosine < 0 or (median_norm > 0 and norms[i] > NORM_RATIO_FLAG * median_norm)
        )
        hospitals[name] = {
            "update_norm": float(norms[i]),
            "cosine_to_median": cosine,
            "flagged": flagged,
        }
    return {"hospitals": hospitals, "median_update_norm": median_norm}
