"""Local training of a recommender at one site: shared items, private users.

A round at a site trains the shared model (item rows, biases, NCF network) and
the site's own user vectors together on its training interactions, then sends
only the shared part. Losses: ``mse`` for explicit ratings, ``bpr`` (Bayesian
personalised ranking with one uniformly drawn negative item per positive) for
implicit feedback. L2 regularisation applies to the looked-up user and item rows
of each batch only, so an item no patient of the site touched is left exactly as
received: its rows need not be sent (``rec-update = "sparse"``).

Without DP the batches are shuffled interaction rows. With DP (``dp = "local"``)
the unit of privacy is the patient (:mod:`app.recommendation.dp`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from data.interactions import Interactions
from models.recommender import UserTable
from models.training import proximal_term

LOSSES = ("mse", "bpr")


@dataclass(frozen=True)
class RecTrainSettings:
    """Hyperparameters of one site's local recommender training."""

    epochs: int = 1
    batch_size: int = 256
    learning_rate: float = 0.01
    optimizer: str = "adam"
    loss: str = "bpr"
    l2: float = 1e-4
    proximal_mu: float = 0.0
    seed: int = 0
    max_steps: int = 0


def resolve_loss(name: str, explicit: bool) -> str:
    """``auto`` is MSE on ratings, BPR on implicit feedback."""
    if name == "auto":
        return "mse" if explicit else "bpr"
    if name not in LOSSES:
        raise ValueError(f"Unknown rec-loss {name!r}; known: auto, {', '.join(LOSSES)}")
    return name


def make_optimizer(params, settings: RecTrainSettings) -> torch.optim.Optimizer:
    """SGD or Adam without weight decay (regularisation is on looked-up rows)."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.learning_rate)
    return torch.optim.SGD(params, lr=settings.learning_rate)


def batch_loss(
    model: nn.Module,
    users: UserTable,
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    settings: RecTrainSettings,
    generator: torch.Generator,
) -> torch.Tensor:
    """The regularised loss of one batch of ``(user, item, value)`` rows."""
    user, item, value = rows
    vectors = users(user)
    score = model.score(vectors, item)
    reg_items = [item]
    if settings.loss == "mse":
        loss = ((score - value) ** 2).mean()
    else:
        negative = torch.randint(
            model.num_items, item.shape, generator=generator, dtype=torch.long
        )
        margin = score - model.score(vectors, negative)
        loss = -nn.functional.logsigmoid(margin).mean()
        reg_items.append(negative)
    if settings.l2 > 0:
        loss = loss + settings.l2 * _row_norms(model, vectors, reg_items)
    return loss


def _row_norms(model: nn.Module, vectors: torch.Tensor, items: list[torch.Tensor]):
    """Mean squared norm of the batch's user vectors and looked-up item rows."""
    total = (vectors**2).sum(-1).mean()
    for key in model.sparse_keys:
        table = model.get_submodule(key.rsplit(".", 1)[0])
        for idx in items:
            total = total + (table(idx) ** 2).sum(-1).mean()
    return total


def as_tensors(rows: Interactions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(rows.user, dtype=torch.long),
        torch.as_tensor(rows.item, dtype=torch.long),
        torch.as_tensor(rows.value, dtype=torch.float32),
    )


def train_site(
    model: nn.Module,
    users: UserTable,
    train: Interactions,
    settings: RecTrainSettings,
    *,
    train_shared: bool = True,
    step_hook: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train shared model and user vectors on a site's rows; return its mean loss.

    ``train_shared=False`` trains the user vectors alone (:func:`fold_in`). Under
    FedProx (``proximal_mu > 0``) the proximal term covers exactly the
    shared parameters, never the user vectors.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    data = as_tensors(train)
    global_params = (
        [p.detach().clone() for p in model.parameters()]
        if settings.proximal_mu > 0 and train_shared
        else None
    )
    shared = [*model.parameters()] if train_shared else []
    optimizer = make_optimizer([*shared, *users.parameters()], settings)
    model.train()
    losses, steps = [], 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            loss = batch_loss(
                model, users, tuple(t[idx] for t in data), settings, generator
            )
            if global_params is not None:
                loss = loss + proximal_term(model, global_params, settings.proximal_mu)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step_hook is not None:
                step_hook()
            losses.append(float(loss.detach()))
            steps += 1
            if settings.max_steps and steps >= settings.max_steps:
                return {"train_loss": float(np.mean(losses))}
    return {"train_loss": float(np.mean(losses)) if losses else float("nan")}


def fold_in(
    model: nn.Module,
    users: UserTable,
    rows: Interactions,
    settings: RecTrainSettings,
    epochs: int = 20,
) -> None:
    """Fit patient vectors to their interactions with the shared model frozen.

    Cold start: a patient the model has never seen (a new patient, or a site that
    did not train yet) gets a vector from a few interactions; nothing is sent.
    """
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        train_site(
            model,
            users,
            rows,
            dataclasses.replace(settings, epochs=epochs, proximal_mu=0.0, max_steps=0),
            train_shared=False,
        )
    finally:
        for p, flag in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
