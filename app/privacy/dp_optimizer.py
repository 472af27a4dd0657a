"""Opacus' DP optimiser, extended to per-record gradients kept implicit (book-keeping).

:func:`app.privacy.per_sample.per_sample_layers` with ``book_keeping`` leaves some
convolution weights without ``grad_sample``: their per-record gradients would be
larger than the layer's activations, so the layer keeps its input, its output
gradient and each record's squared gradient norm (from Gram matrices) instead.
This optimiser clips with the norms of all parameters together, exactly as
Opacus' ``DPOptimizer`` does (same clip factor formula), and forms each deferred
weight's clipped sum in one summed-gradient pass with every record's output
gradient scaled by its clip factor. Noise, scaling and the accountant hook are
Opacus' own, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from app.privacy.per_sample import Deferred


def _deferred(param: nn.Parameter) -> Deferred | None:
    return getattr(param, "deferred", None)


class BookKeepingDPOptimizer(DPOptimizer):
    """``DPOptimizer`` that also takes parameters with deferred per-record gradients."""

    @classmethod
    def replacing(cls, optimizer: DPOptimizer) -> BookKeepingDPOptimizer:
        """A copy of ``optimizer``: same optimiser, noise, clip, batch and generator.

        Step hooks (the accountant) are not copied: attach them to the result.
        """
        return cls(
            optimizer.original_optimizer,
            noise_multiplier=optimizer.noise_multiplier,
            max_grad_norm=optimizer.max_grad_norm,
            expected_batch_size=optimizer.expected_batch_size,
            loss_reduction=optimizer.loss_reduction,
            generator=optimizer.generator,
            secure_mode=optimizer.secure_mode,
        )

    @property
    def grad_samples(self) -> list[torch.Tensor]:
        """Per-record gradients of the parameters that have them materialised."""
        return [
            self._get_flat_grad_sample(p) for p in self.params if _deferred(p) is None
        ]

    @property
    def accumulated_iterations(self) -> int:
        """Always 1: per_sample_layers sums repeated backward passes in place."""
        return 1

    def per_sample_clip_factors(self) -> torch.Tensor:
        """min(1, C / (||g_i|| + 1e-6)) over all parameters, as Opacus computes it."""
        flat = [g.reshape(len(g), -1) for g in self.grad_samples]
        norms2 = [torch.linalg.vecdot(g, g) for g in flat]
        norms2 += [d.norms2 for d in map(_deferred, self.params) if d is not None]
        norms = torch.stack(norms2, dim=1).sum(dim=1).sqrt()
        return (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)

    def clip_and_accumulate(self) -> None:
        """Store the sum of clipped per-record gradients in ``summed_grad``."""
        factors = self.per_sample_clip_factors()
        for p in self.params:
            deferred = _deferred(p)
            if deferred is None:
                grad = torch.einsum("i,i...", factors, self._get_flat_grad_sample(p))
                p.grad_sample = None  # consumed: a second step without backward fails
            else:
                grad = deferred.layer.clipped_weight_sum(deferred, factors)
                p.deferred = None
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        """Clip, add noise, scale and call the step hook, as ``DPOptimizer`` does."""
        if not self.params:
            return True
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        self.scale_grad()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear gradients, per-record gradients and deferred ones."""
        for p in self.params:
            p.deferred = None
        super().zero_grad(set_to_none)
