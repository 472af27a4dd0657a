"""Ditto: a personal model regularised toward the global one.

Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021, https://arxiv.org/abs/2012.04221. Each round the hospital trains the
received global model as plain FedAvg would (that is the update it sends), and
its personal model ``v`` on ``loss(v) + (lambda / 2) * ||v - w_global||^2``,
where ``w_global`` is the global model it received this round
(``ditto-lambda``). ``v`` starts as the first global model it receives.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from flwr.app import RecordDict
from torch import nn

from app.personalization.base import Method, shuffled
from data.spec import Split
from models.training import TrainSettings, train_epochs


class Ditto(Method):
    """Global model trained as usual; personal model pulled toward it."""

    name = "ditto"

    def train(
        self,
        model: nn.Module,
        train: Split,
        settings: TrainSettings,
        state: RecordDict,
        device: torch.device,
    ) -> dict[str, float]:
        received = [p.detach().clone() for p in model.parameters()]
        personal = self._personal_or_global(model, state)
        metrics = super().train(model, train, settings, state, device)
        loader = shuffled(train, settings)
        pulled = dataclasses.replace(settings, proximal_mu=self.cfg.ditto_lambda)
        stats = train_epochs(personal, loader, pulled, device, anchor=received)
        self.save(state, personal.state_dict())
        return {**metrics, "personal_train_loss": stats["train_loss"]}

    def personal(
        self, model: nn.Module, train: Split, state: RecordDict, device: torch.device
    ) -> nn.Module | None:
        del train, device
        stored = self.load(state)
        if stored is None:
            return None
        personal = copy.deepcopy(model)
        personal.load_state_dict(stored)
        return personal

    def _personal_or_global(self, model: nn.Module, state: RecordDict) -> nn.Module:
        personal = copy.deepcopy(model)
        stored = self.load(state)
        if stored is not None:
            personal.load_state_dict(stored)
        return personal
