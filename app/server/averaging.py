"""Server-side weight averaging: an exponential moving average of the global model.

Run config ``model-ema`` (the decay ``d``, 0 = off). After the ``t``-th round's
aggregation the server updates

    ema_t = ema_{t-1} + (1 - d) / (1 - d**t) * (global_t - ema_{t-1})

which is ``sum_i d**(t-i) global_i / sum_i d**(t-i)``: an exponential moving
average whose weights are normalised to sum to one (the bias correction Adam
applies to its moments), so the first update is round 1's model and no weight
stays on the random initial model or a zero start. Training
continues from the raw global model; the average is the run's *model*: what the
hospitals and the server evaluate each round, what ``select-best`` compares and
what ``final_model.pt`` holds. Polyak and Juditsky, "Acceleration of stochastic
approximation by averaging", SIAM J. Control Optim. 1992. It is post-processing
of the aggregated models, so it spends no privacy budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord


class ModelEMA:
    """Exponential moving average of the global arrays, one update per round.

    Parameters
    ----------
    decay
        The long-run decay ``d`` in ``[0, 1)``; ``0`` makes :meth:`update` return
        the global arrays unchanged (no averaging).
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"model-ema must be in [0, 1), got {decay}.")
        self.decay = decay
        self.updates = 0
        self.average: dict[str, np.ndarray] | None = None

    @property
    def enabled(self) -> bool:
        """True when the run averages (``decay > 0``)."""
        return self.decay > 0.0

    def next_weight(self) -> float:
        """The weight of the next round's model in the average, ``(1-d)/(1-d**t)``."""
        t = self.updates + 1
        return (1.0 - self.decay) / (1.0 - self.decay**t)

    def update(self, arrays: ArrayRecord) -> ArrayRecord:
        """Fold this round's global ``arrays`` into the average; return the model.

        Floating-point arrays are averaged in float64 and returned in their own
        dtype; integer arrays (counters) are taken from ``arrays`` as they are.
        """
        if not self.enabled:
            return arrays
        new = {k: a.numpy() for k, a in arrays.items()}
        if self.average is None:
            self.average = {k: v.astype(np.float64) for k, v in new.items()}
        elif set(self.average) != set(new):
            raise ValueError(
                "model-ema: the global model's arrays changed between rounds "
                f"({sorted(set(self.average) ^ set(new))})."
            )
        else:
            w = self.next_weight()
            for k, v in new.items():
                self.average[k] = self.average[k] + w * (v - self.average[k])
        self.updates += 1
        return self.model(arrays)

    def model(self, arrays: ArrayRecord) -> ArrayRecord:
        """The run's model: the average in the dtypes of ``arrays``, else ``arrays``.

        Before the first update (or with averaging off) that is ``arrays``
        itself; integer arrays (counters) always come from ``arrays``.
        """
        if self.average is None:
            return arrays
        out = {}
        for k, a in arrays.items():
            v = a.numpy()
            floating = np.issubdtype(v.dtype, np.floating)
            out[k] = Array(
                np.asarray(self.average[k], dtype=v.dtype) if floating else v
            )
        return ArrayRecord(out)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the average and the number of updates."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "average": {k: v.copy() for k, v in (self.average or {}).items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resumed run)."""
        if not state:
            return
        self.updates = int(state["updates"])
        average = {
            k: np.array(v, dtype=np.float64) for k, v in state["average"].items()
        }
        self.average = average or None
