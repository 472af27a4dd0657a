"""The hospital's side of ``query.input_stats``: aggregates of its training inputs.

A network that standardises features it computes from the images (``shape``:
:mod:`models.shape`) needs their means and spreads over the federation. Before
round 1 the server asks each hospital for the count, sums and sums of squares of
those features over its training split: fixed-length aggregates, no record,
score or identifier. A split smaller than the hospital's own ``min-records``
sends nothing (an error reply). The server side is :mod:`app.server.input_stats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUERY = "input_stats"  # message type ``query.input_stats``
REPLY_KEY = "input-stats"
COUNT, SUMS, SQ_SUMS = "count", "sums", "sq-sums"


def input_statistics(images: np.ndarray, *, min_records: int) -> dict[str, Any]:
    """The reply's record for the training ``images`` of one hospital.

    ``count`` is a one-element list so the site policy's ``min-records`` filter
    reads it as it reads other released counts.

    Raises
    ------
    ValueError
        When the split holds fewer than two records or fewer than ``min_records``.
    """
    from models.shape import descriptor_sums  # torch: only when asked

    needed = max(2, min_records)  # one record's sums would be its own descriptors
    if len(images) < needed:
        raise ValueError(
            f"input statistics: the training split holds {len(images)} records, "
            f"fewer than {needed}; nothing released."
        )
    count, sums, sq_sums = descriptor_sums(images)
    return {
        COUNT: [float(count)],
        SUMS: [float(v) for v in sums],
        SQ_SUMS: [float(v) for v in sq_sums],
    }
