"""FENDA's network: a global and a local feature extractor, one head on both.

Tyler et al., "FENDA-FL: Personalized Federated Learning on Heterogeneous
Clinical Datasets", 2023, https://arxiv.org/abs/2309.16825. The global extractor
is federated; the local extractor and the head never leave the hospital. Both
extractors are the federation's model without its head (:func:`headless`), so
any registered network with a final linear layer becomes a FENDA network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from models.personalization import last_linear


def headless(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose last linear layer is replaced by the identity.

    Its state-dict keys are ``model``'s minus the head's, so trained extractor
    weights load back into ``model`` with ``strict=False``. The head must be the
    network's last operation (true of every registered model).
    """
    body = copy.deepcopy(model)
    head = last_linear(body)
    for name, module in body.named_modules():
        if module is head:
            parent_name, _, attr = name.rpartition(".")
            parent = body.get_submodule(parent_name) if parent_name else body
            setattr(parent, attr, nn.Identity())
            return body
    raise ValueError("the model's head was not found among its modules.")


class FendaNet(nn.Module):
    """``head(concat(global_extractor(x), local_extractor(x)))``."""

    def __init__(
        self, global_extractor: nn.Module, local_extractor: nn.Module, head: nn.Linear
    ) -> None:
        super().__init__()
        self.global_extractor = global_extractor
        self.local_extractor = local_extractor
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.global_extractor(x), self.local_extractor(x)]
        return self.head(torch.cat([f.flatten(1) for f in features], dim=1))


def fenda_from(model: nn.Module) -> FendaNet:
    """A FENDA network shaped after ``model``: both extractors start as its body,
    the head takes both feature vectors (twice the head's input width).
    """
    head = last_linear(model)
    body = headless(model)
    return FendaNet(
        body,
        copy.deepcopy(body),
        nn.Linear(2 * head.in_features, head.out_features),
    )
