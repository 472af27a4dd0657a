"""Transfer and per-hospital personalization of a federated model.

* Transfer: :func:`load_initial_weights` starts a federation from a model trained
  on a source population (``init-model``), after checking it fits this run.
* Head fine-tuning: :func:`personalize_head` adapts a copy of the global model's
  last layer (or its bias alone, ``personalize-part``) to one hospital's training
  data; the copy never leaves the hospital.
* FedBN-style local normalisation (Li et al., "FedBN: Federated Learning on
  Non-IID Features via Local Batch Normalization", ICLR 2021,
  https://arxiv.org/abs/2102.07623): the affine parameters of normalisation
  layers stay at each hospital (:class:`LocalNorm`, kept in ``context.state``).
  A hospital returns the *received* global values for those keys, so FedAvg's
  weighted mean leaves them as they were: the server aggregates them out without
  a special strategy, and a hospital's own values are never sent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from data.spec import DatasetInfo, Split
from models import ModelSpec
from models.checkpoint import ModelFileError, load_model
from models.training import TrainSettings, make_loader, train_epochs

NORM_TYPES = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
LOCAL_NORM_STATE = "local-norm"


def _bias_of(head: nn.Linear) -> list[nn.Parameter]:
    if head.bias is None:
        raise ValueError("personalize-part='bias' needs a head with a bias.")
    return [head.bias]


# What head fine-tuning adapts (``personalize-part``; names in
# app.personalization.FINETUNE_PARTS): the whole last layer, or only its bias, one
# offset per class. Why the bias alone: where hospitals differ mostly in case mix
# (heart disease: 37-97% prevalence), shifting the class offsets moves the decision
# to the hospital's prevalence with as many parameters as classes, not the
# features' weights fitted again on a few dozen records.
HEAD_PARTS: dict[str, Callable[[nn.Linear], list[nn.Parameter]]] = {
    "head": lambda head: list(head.parameters()),
    "bias": _bias_of,
}


def load_initial_weights(
    path: str | Path, spec: ModelSpec, info: DatasetInfo
) -> dict[str, torch.Tensor]:
    """Weights of a saved ``final_model.pt`` to start this run from.

    Raises
    ------
    ModelFileError
        If the file is not a medflower model, or its network or input features
        differ from this run's (the message names what differs).
    """
    _, payload = load_model(path)
    saved = ModelSpec(**payload["model"])
    if saved.name != spec.name or saved.kwargs != spec.kwargs:
        raise ModelFileError(
            f"init-model {path}: it holds model {saved.name!r} {saved.kwargs}, but "
            f"this run builds {spec.name!r} {spec.kwargs}; set 'model' and the model "
            "options (mlp-hidden, mlp-layers) to match, and use data with the same "
            "features."
        )
    names = tuple(payload.get("data", {}).get("feature_names") or ())
    if names and info.feature_names and names != tuple(info.feature_names):
        raise ModelFileError(
            f"init-model {path}: trained on features {list(names)}, but this run's "
            f"data has {list(info.feature_names)}."
        )
    return dict(payload["state_dict"])


def norm_keys(model: nn.Module) -> list[str]:
    """State-dict keys that belong to normalisation layers."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            keys += [f"{name}.{k}" if name else k for k in module.state_dict()]
    return keys


class LocalNorm:
    """FedBN at one hospital: its normalisation parameters live in ``state``."""

    def __init__(self, model: nn.Module, state: RecordDict) -> None:
        self.model, self.state = model, state
        self.keys = norm_keys(model)
        if not self.keys:
            raise ValueError(
                "'local-norm' needs a model with normalisation layers "
                '(e.g. model = "mlp-norm").'
            )
        current = model.state_dict()
        self.received = {k: current[k].detach().clone() for k in self.keys}

    def use_local(self) -> bool:
        """Load this hospital's own norm parameters (if it has any yet)."""
        if LOCAL_NORM_STATE not in self.state.array_records:
            return False
        local = self.state.array_records[LOCAL_NORM_STATE].to_torch_state_dict()
        self.model.load_state_dict(local, strict=False)
        return True

    def keep_and_restore(self) -> None:
        """Store the trained norm parameters locally; put the received global
        values back in the model that will be sent.
        """
        current = self.model.state_dict()
        self.state[LOCAL_NORM_STATE] = ArrayRecord(
            {k: current[k].detach().cpu().clone() for k in self.keys}
        )
        self.model.load_state_dict(self.received, strict=False)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classification head: the model's last ``nn.Linear``."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError("the model has no linear layer to personalise.")
    return heads[-1]


def personalize_head(
    model: nn.Module,
    train: Split,
    settings: TrainSettings,
    device: torch.device,
    *,
    part: str = "head",
) -> nn.Module:
    """A copy of ``model`` whose last linear layer is fine-tuned on ``train``.

    The rest of the network is frozen, so the shared representation is kept and
    only the decision layer adapts to the hospital's population; ``part`` (a key
    of :data:`HEAD_PARTS`) narrows it to the head's bias.
    """
    local = copy.deepcopy(model)
    tuned = HEAD_PARTS[part](last_linear(local))
    for p in local.parameters():
        p.requires_grad_(False)
    for p in tuned:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(
        tuned, lr=settings.learning_rate, momentum=settings.momentum
    )
    loader = make_loader(train, settings.batch_size, shuffle=True, seed=settings.seed)
    train_epochs(local, loader, settings, device, optimizer=optimizer)
    return local


def prefixed(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items() if v == v}
