"""Local DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

The caller carries the accountant history across rounds.

Model-agnostic: any module Opacus' ModuleValidator accepts (no BatchNorm, no
in-place ops on hooked activations) trains here, tabular or imaging. Per-sample
gradients come from :mod:`app.privacy.per_sample` (``grad_sampler="layers"``, the
default: computed inside each layer's backward, no summed weight gradient,
book-keeping for convolutions on small feature maps) or from Opacus' own hooks
(``"opacus"``, also used for any model with a layer ``app.privacy.per_sample`` has no
rule for). Opacus does the Poisson sampling, noise and accounting either way, and
the clipping rule is Opacus'. State-dict keys are unchanged because the model is
never wrapped.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from app.privacy.accounting import (
    HistoryEntry,
    PrivacyBudgetExhausted,
    compose,
    epsilon_of,
    new_accountant,
    plan_noise_multiplier,
)
from app.privacy.dp_optimizer import BookKeepingDPOptimizer
from app.privacy.per_sample import per_sample_layers, unsupported_layers
from data.spec import Split
from models.training import OPTIMIZERS, TrainSettings, make_loader

FULL_HOOK_WARNING = "Full backward hook is firing when gradients are computed"

log = logging.getLogger(__name__)

# How per-sample gradients are computed: our per-layer engine or Opacus' hooks.
GRAD_SAMPLERS = ("layers", "opacus")
DEFAULT_GRAD_SAMPLER = "layers"


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD settings of one hospital (keyword-only so sigma, C and delta can't swap).

    ``noise_multiplier`` is the std of the Gaussian noise relative to
    ``max_grad_norm``; 0 means clipping only (no privacy, for tests and ablations).
    ``grad_sampler`` picks how per-sample gradients are computed (one of
    ``GRAD_SAMPLERS``); it changes speed, not the mechanism or its accounting.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str = "prv"
    secure_rng: bool = False
    budget: float = math.inf
    grad_sampler: str = DEFAULT_GRAD_SAMPLER

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.max_grad_norm <= 0:
            raise ValueError("noise_multiplier must be >= 0 and max_grad_norm > 0.")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}.")
        if self.grad_sampler not in GRAD_SAMPLERS:
            raise ValueError(
                f"grad_sampler must be one of {GRAD_SAMPLERS}: {self.grad_sampler!r}"
            )


@dataclass
class DPRoundResult:
    """What one DP training call did: loss, steps and the updated privacy history."""

    train_loss: float
    steps: int
    sample_rate: float
    history: list[HistoryEntry] = field(default_factory=list)
    epsilon: float = 0.0


def batches_per_epoch(num_records: int, batch_size: int) -> int:
    """Poisson-sampled steps per epoch: Opacus keeps the loader's length."""
    if num_records < 1:
        raise ValueError("DP training needs at least one record.")
    return math.ceil(num_records / batch_size)


def sample_rate(num_records: int, batch_size: int) -> float:
    """Poisson sampling rate q: each record joins each batch with probability q."""
    return 1.0 / batches_per_epoch(num_records, batch_size)


def planned_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    num_records: int,
    batch_size: int,
    epochs_per_round: int,
    rounds: int,
    accountant: str,
) -> float:
    """Return the noise multiplier that spends ``target_epsilon`` over the run.

    Planned over every round and local epoch at this hospital's own sample rate.
    """
    steps = rounds * epochs_per_round * batches_per_epoch(num_records, batch_size)
    return plan_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate(num_records, batch_size),
        steps=steps,
        mechanism=accountant,
    )


def check_dp_compatible(model: nn.Module) -> None:
    """Raise ValueError listing what Opacus cannot bound per sample (e.g. BatchNorm).

    We do not ``ModuleValidator.fix`` here: swapping layers would change the
    state-dict keys the federation shares. DP-capable models are built DP-safe.
    """
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        detail = "; ".join(str(e) for e in errors[:5])
        raise ValueError(f"Model is not compatible with DP-SGD: {detail}")


def epsilon_after_round(
    history: list[HistoryEntry],
    dp: DPSettings,
    *,
    num_records: int,
    batch_size: int,
    epochs: int,
) -> tuple[list[HistoryEntry], float]:
    """Return the history and epsilon this hospital would have after one more round."""
    steps = epochs * batches_per_epoch(num_records, batch_size)
    future = compose(
        history,
        noise_multiplier=dp.noise_multiplier,
        sample_rate=sample_rate(num_records, batch_size),
        steps=steps,
    )
    return future, epsilon_of(future, delta=dp.delta, mechanism=dp.accountant)


def check_budget(
    history: list[HistoryEntry],
    dp: DPSettings,
    *,
    num_records: int,
    batch_size: int,
    epochs: int,
    other_epsilon: float = 0.0,
) -> tuple[list[HistoryEntry], float]:
    """Return history and DP-SGD epsilon after the next round, refusing past budget.

    ``other_epsilon`` is pure epsilon-DP this hospital spent on other releases
    (cohort statistics); by basic composition the total is the sum, and
    PrivacyBudgetExhausted is raised when that total would exceed ``dp.budget``.
    """
    future, eps_next = epsilon_after_round(
        history, dp, num_records=num_records, batch_size=batch_size, epochs=epochs
    )
    if eps_next + other_epsilon > dp.budget:
        spent = epsilon_of(history, delta=dp.delta, mechanism=dp.accountant)
        other = (
            f", of which {other_epsilon:.3f} on cohort statistics"
            if other_epsilon
            else ""
        )
        raise PrivacyBudgetExhausted(
            f"privacy budget exhausted: epsilon would reach "
            f"{eps_next + other_epsilon:.3f} > budget {dp.budget:.3f} at "
            f"delta={dp.delta:g} (spent so far {spent + other_epsilon:.3f}{other})"
        )
    return future, eps_next


@contextmanager
def private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    dp: DPSettings,
    *,
    history: list[HistoryEntry] | None = None,
    noise_generator: torch.Generator | None = None,
) -> Iterator[tuple[PrivacyEngine, DPOptimizer, DataLoader]]:
    """Yield Opacus' engine, DP optimiser and Poisson loader for ``model``.

    The engine's accountant starts from ``history``. Inside the block a backward
    pass of a mean-reduced loss prepares each parameter's per-sample gradients the
    way ``dp.grad_sampler`` says, and the optimiser's step clips, noises and
    accounts for them; on exit the model is as it was (no hooks, no per-sample
    attributes, its own layers), whatever happened inside.
    """
    problems = unsupported_layers(model) if dp.grad_sampler == "layers" else []
    if problems:
        log.info(
            "per-sample gradients by Opacus hooks: no per-layer rule for %s",
            "; ".join(problems),
        )
    layers = dp.grad_sampler == "layers" and not problems
    with warnings.catch_warnings():
        # Opacus' "Secure RNG turned off" advice, printed by every hospital's
        # process: the run's final privacy summary says it once (dp-secure-rng).
        warnings.filterwarnings("ignore", "Secure RNG turned off", UserWarning)
        engine = PrivacyEngine(accountant=dp.accountant, secure_mode=dp.secure_rng)
    engine.accountant = new_accountant(dp.accountant, history or [])
    hooks, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_generator,
        # "no_op": Opacus leaves per-sample gradients to us (app.privacy.per_sample).
        grad_sample_mode="no_op" if layers else "hooks",
        wrap_model=False,
    )
    if layers:
        # Opacus' optimiser, extended to the layers' deferred per-record gradients.
        dp_optimizer = BookKeepingDPOptimizer.replacing(dp_optimizer)
        dp_optimizer.attach_step_hook(
            engine.accountant.get_optimizer_hook_fn(sample_rate=1 / len(dp_loader))
        )
    try:
        with (
            per_sample_layers(model, book_keeping=True) if layers else nullcontext(),
            warnings.catch_warnings(),
        ):
            # Opacus' hooks (dp-grad-sampler = "opacus") make torch warn that a
            # full backward hook fires though the inputs need no gradient: expected.
            warnings.filterwarnings("ignore", FULL_HOOK_WARNING, UserWarning)
            yield engine, dp_optimizer, dp_loader
    finally:
        hooks.cleanup()
        for p in model.parameters():
            p.grad_sample = None


def train_dp(
    model: nn.Module,
    split: Split,
    settings: TrainSettings,
    dp: DPSettings,
    device: torch.device,
    *,
    history: list[HistoryEntry] | None = None,
    seed: int = 0,
    report_epsilon: bool = True,
) -> DPRoundResult:
    """Train ``model`` in place with DP-SGD for ``settings.epochs`` Poisson epochs.

    ``history`` is the hospital's accountant history before this call; the result
    holds the history after it and (with ``report_epsilon``) the cumulative epsilon
    at ``dp.delta``, else NaN. The
    sampling and noise generators are seeded from ``seed`` unless ``dp.secure_rng``.
    """
    if settings.proximal_mu > 0:
        raise ValueError("DP-SGD does not support the FedProx proximal term.")
    check_dp_compatible(model)
    model.to(device).train()
    noise_generator = None
    if not dp.secure_rng:
        noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    total, count, steps = 0.0, 0, 0
    with private_training(
        model,
        OPTIMIZERS[settings.optimizer](model.parameters(), settings),
        make_loader(split, settings.batch_size, shuffle=True, seed=seed),
        dp,
        history=history,
        noise_generator=noise_generator,
    ) as (engine, optimizer, loader):
        for _ in range(settings.epochs):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                out = model(x)
                # An empty Poisson batch still takes a (pure-noise) step: skipping it
                # would make the step count, and so the accounting, data-dependent.
                loss = criterion(out, y) if len(y) else out.sum() * 0.0
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
                steps += 1
    new_history = [
        (float(s), float(q), int(n)) for s, q, n in engine.accountant.history
    ]
    return DPRoundResult(
        train_loss=total / count if count else math.nan,
        steps=steps,
        sample_rate=1.0 / len(loader),
        history=new_history,
        epsilon=(
            epsilon_of(new_history, delta=dp.delta, mechanism=dp.accountant)
            if report_epsilon
            else math.nan
        ),
    )
