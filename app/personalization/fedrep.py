"""FedRep: a shared representation (body), a head per hospital.

Collins et al., "Exploiting Shared Representations for Personalized Federated
Learning", ICML 2021, https://arxiv.org/abs/2102.07078. Each round the hospital
trains its own head (the model's last linear layer) for ``fedrep-head-epochs``
with the received body frozen, then the body for ``local-epochs`` with its head
frozen. Only the body is sent; the head stays in ``context.state``. The
server's copy of the head is never trained, so its global model is not a
classifier: read the ``personal_*`` metrics.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from flwr.app import RecordDict
from torch import nn

from app.personalization.base import Method, head_keys, shuffled, trainable_only
from data.spec import Split
from models.personalization import last_linear
from models.training import TrainSettings, train_epochs


class FedRep(Method):
    """Local head first, then the shared body; the reply holds the body only."""

    name = "fedrep"
    shares_head = False

    def train(
        self,
        model: nn.Module,
        train: Split,
        settings: TrainSettings,
        state: RecordDict,
        device: torch.device,
    ) -> dict[str, float]:
        stored = self.load(state)
        if stored is not None:
            model.load_state_dict(stored, strict=False)
        head = last_linear(model)
        head_ids = {id(p) for p in head.parameters()}
        body = [p for p in model.parameters() if id(p) not in head_ids]
        loader = shuffled(train, settings)
        head_settings = dataclasses.replace(
            settings, epochs=self.cfg.fedrep_head_epochs, max_steps=0, proximal_mu=0.0
        )
        with trainable_only(model, head.parameters()):
            train_epochs(model, loader, head_settings, device)
        with trainable_only(model, body):
            stats = train_epochs(model, loader, settings, device)
        keys = head_keys(model)
        self.save(state, {k: v for k, v in model.state_dict().items() if k in keys})
        return {"train_loss": stats["train_loss"]}

    def personal(
        self, model: nn.Module, train: Split, state: RecordDict, device: torch.device
    ) -> nn.Module | None:
        del train, device
        stored = self.load(state)
        if stored is None:
            return None
        personal = copy.deepcopy(model)
        personal.load_state_dict(stored, strict=False)
        return personal
