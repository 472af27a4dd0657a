"""TEST HARNESS ONLY: model-poisoning hospitals for robustness experiments.

With ``poison-fraction > 0`` the simulated hospitals with the lowest partition ids
(``round(poison-fraction * num-partitions)`` of them) send
``w_global - poison-scale * (w_local - w_global)``: their honest update,
sign-flipped and scaled. This lets ``medflower benchmark poisoning`` measure how
robust aggregation copes. It is honoured only in simulation (the node config has
a ``partition-id``); a deployed SuperNode ignores it, so a run config can never
make a real hospital send a corrupted model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)


def is_poisoned(poison_fraction: float, node_config: Mapping[str, Any]) -> bool:
    """Whether this simulated hospital plays a poisoner (deterministic, lowest ids)."""
    if poison_fraction <= 0:
        return False
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        log.warning(
            "poison-fraction is set but ignored: this is not a simulated hospital."
        )
        return False
    count = int(round(poison_fraction * int(node_config["num-partitions"])))
    return int(node_config["partition-id"]) < count


def poison_update(
    global_state: Mapping[str, torch.Tensor],
    local_state: Mapping[str, torch.Tensor],
    scale: float,
) -> dict[str, torch.Tensor]:
    """``global - scale * (local - global)`` for floating tensors; others unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, local in local_state.items():
        base = global_state[key]
        if local.is_floating_point():
            out[key] = base - scale * (local.detach().cpu() - base)
        else:
            out[key] = local
    return out
