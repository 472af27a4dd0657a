"""FENDA-FL: a global and a local feature extractor, a local head on both.

Tyler et al., "FENDA-FL: Personalized Federated Learning on Heterogeneous
Clinical Datasets", 2023, https://arxiv.org/abs/2309.16825. As in the paper (and
FL4Health's ``FendaModel``), only the global extractor is federated: the local
extractor and the head over both extractors' features stay at the hospital. The
global extractor is the federation's model without its head
(:func:`models.fenda.headless`), so the reply holds the model's body only and
the server's head is never trained: its global model is not a classifier, read
the ``personal_*`` metrics. Each round the whole FENDA network trains on the
hospital's loss; the local extractor starts as the first global body received.
"""

from __future__ import annotations

import torch
from flwr.app import RecordDict
from torch import nn

from app.personalization.base import Method, shuffled
from data.spec import Split
from models.fenda import FendaNet, fenda_from
from models.training import TrainSettings, train_epochs

LOCAL_PARTS = ("local_extractor.", "head.")  # FendaNet keys kept at the hospital


class Fenda(Method):
    """The FENDA network trained locally; the reply holds its global extractor."""

    name = "fenda"
    shares_head = False

    def train(
        self,
        model: nn.Module,
        train: Split,
        settings: TrainSettings,
        state: RecordDict,
        device: torch.device,
    ) -> dict[str, float]:
        net = self._network(model, state)
        loader = shuffled(train, settings)
        stats = train_epochs(net, loader, settings, device)
        model.load_state_dict(net.global_extractor.state_dict(), strict=False)
        local = {k: v for k, v in net.state_dict().items() if k.startswith(LOCAL_PARTS)}
        self.save(state, local)
        return {"train_loss": stats["train_loss"]}

    def personal(
        self, model: nn.Module, train: Split, state: RecordDict, device: torch.device
    ) -> nn.Module | None:
        del train, device
        if self.load(state) is None:
            return None
        return self._network(model, state)

    def _network(self, model: nn.Module, state: RecordDict) -> FendaNet:
        # seeded by the round's seed_torch: the new head's initial weights
        net = fenda_from(model)
        stored = self.load(state)
        if stored is not None:
            net.load_state_dict(stored, strict=False)
        return net
