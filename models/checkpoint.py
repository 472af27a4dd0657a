"""Save and load a trained model with everything needed to apply it again."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.spec import DatasetInfo
from models import ModelSpec

FORMAT = "medflower-model/1"


class ModelFileError(ValueError):
    """A model file is missing, not ours, or does not fit the data it is used on."""


def save_model(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    spec: ModelSpec,
    info: DatasetInfo,
    *,
    run_config: dict[str, Any],
    preprocessing: dict[str, Any],
    decision: dict[str, Any] | None = None,
) -> None:
    """Write ``state_dict`` with its model spec, data description and run config.

    ``decision`` (:class:`models.decision.Decision` as a dict) is the decision
    threshold and temperature chosen on the validation splits, when there is one.
    Only tensors and plain Python values are stored, so ``load_model`` can use
    ``torch.load(weights_only=True)``.
    """
    payload = {
        "format": FORMAT,
        "task": info.task,
        "model": spec.to_dict(),
        "data": {**asdict(info), "input_shape": list(info.input_shape)},
        "preprocessing": preprocessing,
        "run_config": run_config,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if decision is not None:
        payload["decision"] = decision
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved network and return it with the file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types here
        raise ModelFileError(
            f"{path}: not a readable medflower model ({err})."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a medflower model file (format {FORMAT}).")
    model = ModelSpec(**payload["model"]).build()
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        lines = str(err).splitlines()  # torch: a header line, then the differences
        detail = lines[1].strip() if len(lines) > 1 else str(err)
        raise ModelFileError(
            f"{path}: its weights do not fit model '{payload['model']['name']}' as "
            f"this version builds it (saved by another version?): {detail}"
        ) from err
    model.eval()
    return model, payload
