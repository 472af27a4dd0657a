"""DP-SGD for recommenders with the patient as the unit of privacy.

A patient's whole history (every interaction, however many) is one record: each
step Poisson-samples patients at rate ``q = 1 / ceil(n_patients / batch-size)``,
computes each sampled patient's gradient of the shared parameters over all of
its interactions (``torch.func`` per-patient gradients), clips it to
``dp-max-grad-norm`` as one vector, sums, adds Gaussian noise of standard
deviation ``sigma * C`` to every coordinate of every shared array and divides by
the expected batch ``q * n``. Accounting is Opacus' (the hospital's history in
``context.state``, the same budget checks as tabular DP-SGD) with ``n`` =
patients, not interactions.

The patient vectors are updated from each patient's own, unclipped gradient: they
never leave the site, and changing one patient changes only its own vector and
its own clipped term, so the release of the shared parameters stays DP.

Under ``rec-dp-shared = "popularity"`` a patient's term is not a loss gradient
but its item-indicator vector scaled to norm exactly ``C`` (the gradient of a
linear popularity objective, so clipping changes nothing), applied to the item
biases alone: the noisy step is a noisy, clipped count of patients per item,
through the same sampling, noise and accounting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn
from torch.func import functional_call, grad, vmap

from app.config import RunConfig
from app.privacy.dp_sgd import DPSettings, batches_per_epoch, sample_rate
from app.privacy.local_dp import LocalDPOutcome, round_budget, save_history
from app.recommendation.training import RecTrainSettings, make_optimizer
from data.interactions import Interactions
from models.recommender import UserTable


def padded_histories(train: Interactions, num_users: int):
    """Per-patient ``(items, values, mask)`` padded to the longest history."""
    counts = np.bincount(train.user, minlength=num_users)
    width = max(int(counts.max()), 1) if len(counts) else 1
    items = np.zeros((num_users, width), dtype=np.int64)
    values = np.zeros((num_users, width), dtype=np.float32)
    mask = np.zeros((num_users, width), dtype=np.float32)
    order = np.argsort(train.user, kind="stable")
    slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    users = train.user[order]
    items[users, slot] = train.item[order]
    values[users, slot] = train.value[order]
    mask[users, slot] = 1.0
    return torch.as_tensor(items), torch.as_tensor(values), torch.as_tensor(mask)


def _patient_loss(model: nn.Module, loss: str, l2: float, frozen=None):
    """Loss of one patient's whole history, as a function of (params, vector).

    ``params`` are the trained shared arrays; ``frozen`` (name -> tensor) the
    shared arrays held fixed, if any.
    """
    fixed = dict(frozen or {})

    def fn(params, vector, items, values, mask, negatives):
        every = {**fixed, **params}
        vectors = vector.expand(len(items), -1)
        score = functional_call(model, every, (vectors, items))
        if loss == "mse":
            per_row = (score - values) ** 2
        else:
            other = functional_call(model, every, (vectors, negatives))
            per_row = -nn.functional.logsigmoid(score - other)
        total = (per_row * mask).sum() / mask.sum().clamp(min=1.0)
        if l2 > 0:
            total = total + l2 * (vector**2).sum()
            for key in model.sparse_keys:
                rows = every[key][items] * mask[:, None]
                total = total + l2 * (rows**2).sum() / mask.sum().clamp(min=1.0)
        return total

    return fn


# ``rec-dp-shared``: the shared arrays DP-SGD trains (and noises); the others
# stay exactly as received (the run's seeded initial values), so their release
# is data-independent and costs no privacy.
DP_SHARED = {
    "all": lambda model: tuple(name for name, _ in model.named_parameters()),
    "biases": lambda model: tuple(model.bias_keys),
    "popularity": lambda model: ("item_bias.weight",),
}


def popularity_terms(
    num_items: int, items: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """Each patient's item indicators scaled to norm ``clip``, as a descent step.

    Returns ``(patients, num_items, 1)`` (the item-bias table's shape per
    patient), negated so that an optimiser's step *raises* the bias of the
    patient's items. A patient without items contributes zeros.
    """
    counts = torch.zeros(len(items), num_items).scatter_add_(1, items, mask)
    indicator = (counts > 0).to(torch.float32)
    norms = indicator.norm(dim=1, keepdim=True).clamp(min=1.0)
    return (-clip * indicator / norms)[:, :, None]


# ``rec-dp-shared`` modes whose per-patient terms replace the loss gradient of
# the shared arrays: name -> (model, items, mask, clip) -> {array: terms}.
DP_TERMS = {
    "popularity": lambda model, items, mask, clip: {
        "item_bias.weight": popularity_terms(model.num_items, items, mask, clip)
    },
}


def _noisy_step(
    grads: dict[str, torch.Tensor],
    dp: DPSettings,
    expected_batch: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Clip each patient's gradient to C, sum, add N(0, (sigma C)^2), average."""
    flat = torch.cat([g.reshape(len(g), -1) for g in grads.values()], dim=1)
    norms = flat.norm(dim=1)
    factor = (dp.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    out = {}
    for key, g in grads.items():
        summed = (g * factor.reshape(-1, *[1] * (g.dim() - 1))).sum(0)
        noise = torch.normal(
            0.0,
            dp.noise_multiplier * dp.max_grad_norm,
            size=summed.shape,
            generator=generator,
        )
        out[key] = (summed + noise) / expected_batch
    return out


def train_site_dp(
    model: nn.Module,
    users: UserTable,
    train: Interactions,
    settings: RecTrainSettings,
    dp: DPSettings,
    trained: tuple[str, ...] | None = None,
    terms=None,
) -> int:
    """Patient-level DP-SGD on the shared arrays ``trained``; returns the steps.

    ``trained`` defaults to every shared array; the others are held fixed.
    ``terms`` (one of :data:`DP_TERMS`), if given, supplies each sampled
    patient's term for the shared arrays instead of its loss gradient; the patient
    vectors still follow their own loss gradient.
    """
    num_users = users.weight.shape[0]
    q = sample_rate(num_users, settings.batch_size)
    steps = settings.epochs * batches_per_epoch(num_users, settings.batch_size)
    histories = padded_histories(train, num_users)
    generator = torch.Generator().manual_seed(settings.seed)
    named = dict(model.named_parameters())
    trained = tuple(named) if trained is None else trained
    frozen = {k: v.detach() for k, v in named.items() if k not in trained}
    per_patient = vmap(
        grad(_patient_loss(model, settings.loss, settings.l2, frozen), argnums=(0, 1)),
        in_dims=(None, 0, 0, 0, 0, 0),
    )
    shared = make_optimizer([named[k] for k in trained], settings)
    private = make_optimizer(list(users.parameters()), settings)
    for _ in range(steps):
        chosen = torch.nonzero(torch.rand(num_users, generator=generator) < q).flatten()
        params = {k: named[k].detach() for k in trained}
        items, values, mask = (h[chosen] for h in histories)
        negatives = torch.randint(
            model.num_items, items.shape, generator=generator, dtype=torch.long
        )
        if len(chosen):
            g_params, g_users = per_patient(
                params, users.weight.detach()[chosen], items, values, mask, negatives
            )
        else:
            g_params = {k: torch.zeros((0, *v.shape)) for k, v in params.items()}
            g_users = torch.zeros((0, users.weight.shape[1]))
        if terms is not None:
            g_params = terms(model, items, mask, dp.max_grad_norm)
        noisy = _noisy_step(g_params, dp, q * num_users, generator)
        for name in trained:
            named[name].grad = noisy[name]
        users.weight.grad = torch.zeros_like(users.weight).index_add_(
            0, chosen, g_users
        )
        shared.step()
        private.step()
    return steps


def rec_dp_round(
    model: nn.Module,
    users: UserTable,
    train: Interactions,
    settings: RecTrainSettings,
    cfg: RunConfig,
    state: RecordDict,
    node_config: Mapping[str, Any] | None = None,
) -> LocalDPOutcome:
    """Check the hospital's budget, train with patient-level DP, account it.

    Raises ``PrivacyBudgetExhausted`` before any training when this round would
    take the hospital past its budget.
    """
    num_users = users.weight.shape[0]
    budget = round_budget(
        cfg,
        state,
        num_records=num_users,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        node_config=node_config,
    )
    trained = DP_SHARED[cfg.rec_dp_shared](model)
    terms = DP_TERMS.get(cfg.rec_dp_shared)
    steps = train_site_dp(model, users, train, settings, budget.dp, trained, terms)
    # the steps taken are data-independent: the history is the one just checked
    save_history(state, budget.future, budget.dp)
    return LocalDPOutcome(
        epsilon=budget.epsilon + budget.stats_epsilon,
        sgd_epsilon=budget.epsilon,
        stats_epsilon=budget.stats_epsilon,
        delta=budget.dp.delta,
        noise_multiplier=budget.dp.noise_multiplier,
        sample_rate=sample_rate(num_users, settings.batch_size),
        steps=steps,
    )
