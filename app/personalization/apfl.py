"""APFL: a local model mixed with the global one by a learned weight.

Deng et al., "Adaptive Personalized Federated Learning", 2020,
https://arxiv.org/abs/2003.13461. The hospital trains the received global model
``w`` on its own loss (the update it sends) and, on the same batches, a local
model ``v`` on the loss of the mixture ``alpha * v(x) + (1 - alpha) * w(x)``;
``alpha`` (starting at ``apfl-alpha``) follows its gradient, clipped to [0, 1].
As in FL4Health's APFL the two models' outputs (logits) are mixed, not their
weights. ``v`` and ``alpha`` stay at the hospital.
"""

from __future__ import annotations

import copy

import torch
from flwr.app import RecordDict
from torch import nn

from app.personalization.base import Method, shuffled
from data.spec import Split
from models.training import OPTIMIZERS, TrainSettings, training_batches

ALPHA = "apfl.alpha"  # the mixing weight's key in the method's record


class Mixture(nn.Module):
    """``alpha * local(x) + (1 - alpha) * global(x)``; gradients reach ``local``
    and ``alpha`` only.
    """

    def __init__(self, local: nn.Module, global_: nn.Module, alpha: float) -> None:
        super().__init__()
        self.local, self.global_ = local, global_
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.local(x) + (1 - self.alpha) * self.global_(x).detach()


class APFL(Method):
    """Global and local models trained side by side, mixed with a learned alpha."""

    name = "apfl"

    def train(
        self,
        model: nn.Module,
        train: Split,
        settings: TrainSettings,
        state: RecordDict,
        device: torch.device,
    ) -> dict[str, float]:
        mixture = self._mixture(model, state)
        mixture.to(device).train()
        global_opt = OPTIMIZERS[settings.optimizer](model.parameters(), settings)
        local_opt = OPTIMIZERS[settings.optimizer](mixture.local.parameters(), settings)
        criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
        loader = shuffled(train, settings)
        total = count = 0.0
        for x, y in training_batches(loader, settings):
            x, y = x.to(device), y.to(device)
            global_opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            global_opt.step()
            local_opt.zero_grad()
            mixture.alpha.grad = None
            criterion(mixture(x), y).backward()
            local_opt.step()
            with torch.no_grad():
                step = settings.learning_rate * mixture.alpha.grad
                mixture.alpha.copy_((mixture.alpha - step).clamp(0.0, 1.0))
            total += float(loss.detach()) * len(y)
            count += len(y)
        self._keep(mixture, state)
        return {"train_loss": total / max(count, 1.0)}

    def personal(
        self, model: nn.Module, train: Split, state: RecordDict, device: torch.device
    ) -> nn.Module | None:
        del train, device
        if self.load(state) is None:
            return None
        return self._mixture(model, state)

    def _mixture(self, model: nn.Module, state: RecordDict) -> Mixture:
        local = copy.deepcopy(model)  # the first round: a copy of the global model
        stored = self.load(state)
        alpha = self.cfg.apfl_alpha
        if stored is not None:
            alpha = float(stored.pop(ALPHA))
            local.load_state_dict(stored)
        return Mixture(local, model, alpha)

    def _keep(self, mixture: Mixture, state: RecordDict) -> None:
        tensors = dict(mixture.local.state_dict())
        tensors[ALPHA] = mixture.alpha.detach().reshape(1)
        self.save(state, tensors)
