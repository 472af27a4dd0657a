"""Split neural network for vertical FL: bottom models per hospital, a top model at
the label holder, and the per-batch forward/backward steps each side runs.

Only embeddings (bottom -> top) and their gradients (top -> bottom) cross between
parties, one batch at a time. A party keeps no autograd graph between messages:
it recomputes the embedding of the batch whose gradient arrives with the same,
not yet updated weights, which gives exactly the gradients of one centralised
network (``tests/test_vertical_split.py`` checks this against autograd).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.training import OPTIMIZERS, TrainSettings


class BottomModel(nn.Module):
    """A hospital's feature extractor: its own columns -> an embedding."""

    def __init__(self, in_features: int, embedding: int = 8, hidden: int = 32) -> None:
        super().__init__()
        if in_features < 1 or embedding < 1 or hidden < 1:
            raise ValueError("in_features, embedding and hidden must be >= 1.")
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, embedding)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TopModel(nn.Module):
    """The label holder's head over the concatenated embeddings of all parties."""

    def __init__(
        self, in_features: int, num_classes: int = 2, hidden: int = 32
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)


class SplitNetwork(nn.Module):
    """The same network held in one place (centralised reference, tests)."""

    def __init__(self, bottoms: Sequence[BottomModel], top: TopModel) -> None:
        super().__init__()
        self.bottoms = nn.ModuleList(bottoms)
        self.top = top

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.top(
            torch.cat([b(x) for b, x in zip(self.bottoms, xs, strict=True)], 1)
        )


def make_optimizer(
    params: list[nn.Parameter], settings: TrainSettings
) -> torch.optim.Optimizer:
    return OPTIMIZERS[settings.optimizer](params, settings)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter buffers (momentum, Adam moments) into
    named tensors that fit an ArrayRecord in ``context.state``.
    """
    out = {}
    for index, buffers in optimizer.state_dict()["state"].items():
        for name, value in buffers.items():
            out[f"{index}.{name}"] = torch.as_tensor(value).detach().clone()
    return out


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Inverse of :func:`optimizer_state` (hyperparameters come from the config)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


@dataclass
class BottomStep:
    """A non-label party: embeddings of a batch, then the update from its gradient."""

    model: BottomModel
    optimizer: torch.optim.Optimizer

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(x)

    def backward(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Accumulate parameter gradients of ``<embedding(x), grad>``."""
        self.model.train()
        embedding = self.model(x)
        if embedding.shape != grad.shape:
            raise ValueError(
                f"gradient of shape {tuple(grad.shape)} for an embedding of shape "
                f"{tuple(embedding.shape)}."
            )
        embedding.backward(grad)

    def update(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self.backward(x, grad)
        self.optimizer.step()


@dataclass
class TopStep:
    """The label holder: its own bottom model, the top model and the loss."""

    bottom: BottomModel
    top: TopModel
    optimizer: torch.optim.Optimizer

    def loss_and_grads(
        self, x_own: torch.Tensor, remote: Sequence[torch.Tensor], y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss of a batch; fills parameter grads and returns d loss / d embedding
        for each remote party's embedding.
        """
        self.bottom.train()
        self.top.train()
        leaves = [e.detach().clone().requires_grad_(True) for e in remote]
        logits = self.top(torch.cat([self.bottom(x_own), *leaves], dim=1))
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        return loss.detach(), [leaf.grad.detach() for leaf in leaves]  # type: ignore[union-attr]

    def train_batch(
        self, x_own: torch.Tensor, remote: Sequence[torch.Tensor], y: torch.Tensor
    ) -> tuple[float, list[torch.Tensor]]:
        self.optimizer.zero_grad()
        loss, grads = self.loss_and_grads(x_own, remote, y)
        self.optimizer.step()
        return float(loss), grads

    @torch.no_grad()
    def predict_proba(
        self, x_own: torch.Tensor, remote: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        self.bottom.eval()
        self.top.eval()
        logits = self.top(torch.cat([self.bottom(x_own), *remote], dim=1))
        return torch.softmax(logits.double(), dim=1)
