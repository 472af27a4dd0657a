"""Per-sample gradients computed inside each layer's backward pass (DP-SGD engine).

Opacus' default ``hooks`` engine lets autograd compute every weight's ordinary
(summed) gradient, which DP-SGD then discards, and derives per-sample convolution
gradients from an unfolded copy of the input. On a CPU that makes a DP-SGD step of
a small CNN cost more than twice a plain one. Here, for the duration of DP
training, each convolution, linear, GroupNorm and LayerNorm layer is replaced by
a module whose autograd function computes only the gradient of its input plus
the per-sample gradients of its parameters: convolutions as one grouped
convolution backward pass with one group per record (the backend's own
weight-gradient kernel), linear layers as one batched outer product. The summed
weight gradient is never formed. Results go where Opacus expects them
(``param.grad_sample``), so Opacus still does everything privacy-relevant:
Poisson sampling, per-sample clipping and noise (``DPOptimizer``) and accounting
(Opacus' ``no_op`` gradient sample mode).

With ``book_keeping`` (what local DP training uses), convolutions on small
feature maps with many channels, where each record's gradient is larger than
the layer's activations, keep only each record's squared gradient norm (from
Gram matrices: ghost norms, Li et al. 2022, Bu et al. 2022) plus the
layer's input and output gradient; the clipped sum is formed after clipping, in
one weight-gradient pass (book-keeping, Bu et al. 2023;
:mod:`app.privacy.dp_optimizer`).

The replacements hold the very same ``Parameter`` objects under the same names,
so optimiser references and ``state_dict`` keys do not change, and
:func:`per_sample_layers` puts the original modules back on exit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class UnsupportedLayer(ValueError):
    """A trainable layer this engine has no per-sample rule for."""


def _store(param: nn.Parameter | None, grad_sample: torch.Tensor) -> None:
    """Set (or, for a layer called twice in one step, add to) ``param.grad_sample``."""
    if param is None or not param.requires_grad:
        return
    previous = getattr(param, "grad_sample", None)
    param.grad_sample = grad_sample if previous is None else previous + grad_sample


def _store_zeros(*params: nn.Parameter | None) -> None:
    """Zero per-sample gradients for an empty (Poisson) batch, as Opacus stores them."""
    for param in params:
        if param is not None:
            _store(param, torch.zeros_like(param).unsqueeze(0))


class _ConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):  # type: ignore[override]
        ctx.layer = layer
        ctx.save_for_backward(x)
        return torch.ops.aten.convolution(
            x, weight, bias, *layer.conv_args, False, layer.zeros, layer.groups
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        layer: PerSampleConv = ctx.layer
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = layer.conv_backward(grad_out, x, input_grad=True)[0]
        n = x.shape[0]
        if n == 0:
            _store_zeros(layer.weight, layer.bias)
            return grad_x, None, None, None
        if layer.bias is not None:
            _store(layer.bias, grad_out.sum(dim=tuple(range(2, grad_out.dim()))))
        if layer.weight.requires_grad:
            layer.weight_per_sample(grad_out, x)
        return grad_x, None, None, None


@dataclass(frozen=True)
class Deferred:
    """A layer's per-record weight gradients kept implicit until clipping."""

    layer: PerSampleConv
    x: torch.Tensor
    grad: torch.Tensor
    norms2: torch.Tensor


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):  # type: ignore[override]
        ctx.layer = layer
        ctx.save_for_backward(x, weight)
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        layer: PerSampleLinear = ctx.layer
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        n = x.shape[0]
        if n == 0:
            _store_zeros(layer.weight, layer.bias)
            return grad_x, None, None, None
        grad = grad_out.reshape(n, -1, grad_out.shape[-1])
        inputs = x.reshape(n, -1, x.shape[-1])
        _store(layer.weight, torch.bmm(grad.transpose(1, 2), inputs))
        if layer.bias is not None:
            _store(layer.bias, grad.sum(dim=1))
        return grad_x, None, None, None


class _GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):  # type: ignore[override]
        n, c = x.shape[:2]
        spatial = math.prod(x.shape[2:])
        out, mean, rstd = torch.ops.aten.native_group_norm(
            x, weight, bias, n, c, spatial, layer.num_groups, layer.eps
        )
        ctx.layer, ctx.sizes = layer, (n, c, spatial)
        ctx.save_for_backward(x, weight, mean, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        layer: PerSampleGroupNorm = ctx.layer
        n, c, spatial = ctx.sizes
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_group_norm_backward(
                grad_out,
                x,
                mean,
                rstd,
                weight,
                n,
                c,
                spatial,
                layer.num_groups,
                [True, False, False],
            )[0]
        if n == 0:
            _store_zeros(layer.weight, layer.bias)
            return grad_x, None, None, None
        grad = grad_out.reshape(n, c, -1)
        grad_sum = grad.sum(dim=2)
        if layer.weight is not None:
            # sum_s g * (x - mean) * rstd = rstd * (sum_s g * x - mean * sum_s g),
            # with each channel's group statistics: no normalised copy of x.
            grad_x_dot = torch.linalg.vecdot(grad, x.reshape(n, c, -1))
            per_channel = c // layer.num_groups
            mean_c = mean.view(n, -1, 1).expand(-1, -1, per_channel).reshape(n, c)
            rstd_c = rstd.view(n, -1, 1).expand(-1, -1, per_channel).reshape(n, c)
            _store(layer.weight, rstd_c * (grad_x_dot - mean_c * grad_sum))
        if layer.bias is not None:
            _store(layer.bias, grad_sum)
        return grad_x, None, None, None


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):  # type: ignore[override]
        out, mean, rstd = torch.ops.aten.native_layer_norm(
            x, layer.normalized_shape, weight, bias, layer.eps
        )
        ctx.layer = layer
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, bias, mean, rstd = ctx.saved_tensors
        layer: PerSampleLayerNorm = ctx.layer
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_layer_norm_backward(
                grad_out,
                x,
                layer.normalized_shape,
                mean,
                rstd,
                weight,
                bias,
                [True, False, False],
            )[0]
        n = x.shape[0]
        if n == 0:
            _store_zeros(layer.weight, layer.bias)
            return grad_x, None, None, None
        # Sum over every dimension between the batch and the normalised ones.
        shape = (n, -1, *layer.normalized_shape)
        grad = grad_out.reshape(shape)
        if layer.weight is not None:
            normalised = ((x - mean) * rstd).reshape(shape)
            _store(layer.weight, (grad * normalised).sum(dim=1))
        if layer.bias is not None:
            _store(layer.bias, grad.sum(dim=1))
        return grad_x, None, None, None


class _PerSampleLayer(nn.Module):
    """Shares a layer's parameters and computes their per-sample gradients."""

    function: type[torch.autograd.Function]

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.weight = layer.weight
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function.apply(x, self.weight, self.bias, self)


class PerSampleConv(_PerSampleLayer):
    """Stand-in for ``nn.Conv1d/2d/3d`` (zero padding given as numbers)."""

    function = _ConvFunction

    def __init__(self, layer: nn.modules.conv._ConvNd) -> None:
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UnsupportedLayer(
                f"{type(layer).__name__} with padding={layer.padding!r} and "
                f"padding_mode={layer.padding_mode!r}"
            )
        if layer.transposed:
            raise UnsupportedLayer(f"{type(layer).__name__} (transposed)")
        super().__init__(layer)
        self.conv_args = (list(layer.stride), list(layer.padding), list(layer.dilation))
        self.zeros = [0] * len(layer.stride)
        self.groups = layer.groups
        self.kernel_size = list(layer.kernel_size)
        self.book_keeping = False
        self._patch_indices: dict[tuple, torch.Tensor] = {}

    def conv_backward(
        self,
        grad: torch.Tensor,
        x: torch.Tensor,
        *,
        input_grad: bool = False,
        weight_grad: bool = False,
        groups: int = 1,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, ...]:
        """The backend's convolution backward: input and/or summed weight gradient."""
        return torch.ops.aten.convolution_backward(
            grad,
            x,
            self.weight if weight is None else weight,
            None,
            *self.conv_args,
            False,
            self.zeros,
            self.groups * groups,
            [input_grad, weight_grad, False],
        )[:2]

    def per_sample_weight_grads(
        self, grad: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Each record's weight gradient, shape ``(n, *weight.shape)``.

        One group per (record, layer group): the backend's weight-gradient kernel
        then returns every record's gradient stacked along the output channels.
        """
        n, shape = x.shape[0], self.weight.shape
        stacked = self.weight.new_empty((n * shape[0], *shape[1:]))  # shape only
        grad_w = self.conv_backward(
            grad.reshape(1, -1, *grad.shape[2:]),
            x.reshape(1, -1, *x.shape[2:]),
            weight_grad=True,
            groups=n,
            weight=stacked,
        )[1]
        return grad_w.view(n, *shape)

    def _ghost_is_cheaper(self, grad: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether Gram matrices cost well under half of per-record gradients.

        Per record the weight gradient is G U^T (G: out channels x output positions
        L; U: the unfolded input, fan-in x L) and its squared norm is the sum of
        (U^T U) * (G^T G). U^T U is gathered from the padded input's own Gram
        matrix (P positions), so the multiply-adds are P^2 in + L^2 (kernel + out)
        against out * fan-in * L for the gradient itself (which the optimiser then
        reads twice more): a win on small feature maps with many channels.
        """
        if not self.book_keeping or self.groups != 1:
            return False
        out_channels, in_channels = self.weight.shape[:2]
        kernel = self.weight[0, 0].numel()
        positions = grad[0, 0].numel()
        padded = math.prod(
            size + 2 * pad
            for size, pad in zip(x.shape[2:], self.conv_args[1], strict=True)
        )
        ghost = padded**2 * in_channels + positions**2 * (kernel + out_channels)
        return 2 * ghost < out_channels * in_channels * kernel * positions

    def _patch_index(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Where each (kernel offset, output, output) pair sits in the flat P x P Gram.

        Entry (o, o') of U^T U sums, over kernel offsets k, the padded input's Gram
        at (position read by o at k, position read by o' at k).
        """
        key = (tuple(x.shape[2:]), tuple(grad.shape[2:]))
        if key not in self._patch_indices:
            stride, padding, dilation = self.conv_args
            kernel = torch.meshgrid(
                *[torch.arange(k) for k in self.kernel_size], indexing="ij"
            )
            output = torch.meshgrid(
                *[torch.arange(o) for o in grad.shape[2:]], indexing="ij"
            )
            index, step = torch.zeros((), dtype=torch.long), 1
            for dim in reversed(range(len(kernel))):
                coordinate = (
                    kernel[dim].reshape(-1, 1) * dilation[dim]
                    + output[dim].reshape(1, -1) * stride[dim]
                )
                index = index + coordinate * step
                step *= x.shape[2 + dim] + 2 * padding[dim]
            pairs = index[:, :, None] * step + index[:, None, :]  # kernel x L x L
            self._patch_indices[key] = pairs.reshape(-1).to(x.device)
        return self._patch_indices[key]

    def ghost_norms2(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Squared norm of each record's weight gradient, without forming it."""
        n = x.shape[0]
        pads = [p for pad in reversed(self.conv_args[1]) for p in (pad, pad)]
        padded = nn.functional.pad(x, pads).flatten(2)  # n x in x P
        inputs_gram = torch.bmm(padded.transpose(1, 2), padded)  # n x P x P
        grads = grad.reshape(n, grad.shape[1], -1)
        positions = grads.shape[2]
        patches_gram = (
            inputs_gram.reshape(n, -1)
            .index_select(1, self._patch_index(x, grad))
            .view(n, -1, positions, positions)
            .sum(dim=1)
        )
        grads_gram = torch.bmm(grads.transpose(1, 2), grads)  # n x L x L
        return (patches_gram * grads_gram).sum(dim=(1, 2))

    def weight_per_sample(self, grad: torch.Tensor, x: torch.Tensor) -> None:
        """Store per-record weight gradients, or defer them (book-keeping).

        Deferred: the layer keeps its input and output gradient and each record's
        squared gradient norm; once the clipping factors are known,
        :meth:`clipped_weight_sum` forms the clipped sum in one summed-gradient
        pass. A second use of the layer within one step materialises both.
        """
        pending = getattr(self.weight, "deferred", None)
        if pending is None and self._ghost_is_cheaper(grad, x):
            norms2 = self.ghost_norms2(grad, x)
            self.weight.deferred = Deferred(self, x.detach(), grad.detach(), norms2)
            return
        if pending is not None:
            self.weight.deferred = None
            _store(self.weight, self.per_sample_weight_grads(pending.grad, pending.x))
        _store(self.weight, self.per_sample_weight_grads(grad, x))

    def clipped_weight_sum(
        self, deferred: Deferred, factors: torch.Tensor
    ) -> torch.Tensor:
        """Sum over records of each record's weight gradient times its factor."""
        scaled = deferred.grad * factors.view(-1, *[1] * (deferred.grad.dim() - 1))
        with torch.no_grad():
            return self.conv_backward(scaled, deferred.x, weight_grad=True)[1]


class PerSampleLinear(_PerSampleLayer):
    """Stand-in for ``nn.Linear``."""

    function = _LinearFunction


class PerSampleGroupNorm(_PerSampleLayer):
    """Stand-in for ``nn.GroupNorm``."""

    function = _GroupNormFunction

    def __init__(self, layer: nn.GroupNorm) -> None:
        super().__init__(layer)
        self.num_groups, self.eps = layer.num_groups, layer.eps


class PerSampleLayerNorm(_PerSampleLayer):
    """Stand-in for ``nn.LayerNorm``."""

    function = _LayerNormFunction

    def __init__(self, layer: nn.LayerNorm) -> None:
        super().__init__(layer)
        self.normalized_shape, self.eps = list(layer.normalized_shape), layer.eps


# Exact types: a subclass may change forward() and must not be replaced silently.
PER_SAMPLE_LAYERS: dict[type[nn.Module], Callable[..., _PerSampleLayer]] = {
    nn.Conv1d: PerSampleConv,
    nn.Conv2d: PerSampleConv,
    nn.Conv3d: PerSampleConv,
    nn.Linear: PerSampleLinear,
    nn.GroupNorm: PerSampleGroupNorm,
    nn.LayerNorm: PerSampleLayerNorm,
}


def _trainable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            yield name, module


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names and types of trainable layers :func:`per_sample_layers` cannot replace."""
    if type(model) in PER_SAMPLE_LAYERS:
        return [f"<model>: a bare {type(model).__name__} (put it in a module)"]
    problems = []
    for name, module in _trainable_layers(model):
        factory = PER_SAMPLE_LAYERS.get(type(module))
        try:
            if factory is None:
                raise UnsupportedLayer(type(module).__name__)
            factory(module)
        except UnsupportedLayer as err:
            problems.append(f"{name or '<model>'}: {err}")
    return problems


def _undo_mean_reduction(
    module: nn.Module, inputs: tuple, output: torch.Tensor
) -> None:
    """Scale the gradient reaching the model's output by the batch size.

    A mean-reduced loss divides each record's gradient by the batch size; scaling
    once at the output (instead of in every layer) makes each row of every
    ``grad_sample`` that record's own gradient, as DP-SGD clips it.
    """
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            "per-sample gradients of a mean-reduced loss need a model returning one "
            f"tensor of per-record outputs, got {type(output).__name__}"
        )
    if output.requires_grad and len(output):
        batch = len(output)
        output.register_hook(lambda grad: grad * batch)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


@contextmanager
def per_sample_layers(
    model: nn.Module, loss_reduction: str = "mean", *, book_keeping: bool = False
) -> Iterator[None]:
    """Within the block, backward passes fill ``param.grad_sample``, not ``param.grad``.

    Every trainable layer is replaced by its per-sample stand-in (same parameters),
    and restored afterwards even if training fails. ``loss_reduction`` is how the
    loss combines records ("mean" or "sum"), as for Opacus. With ``book_keeping``,
    convolutions whose per-record gradients cost more than their Gram matrices
    leave ``param.deferred`` (a :class:`Deferred`) instead of ``param.grad_sample``:
    only an optimiser that understands it (``app.privacy.dp_optimizer``) may step then.

    Raises
    ------
    UnsupportedLayer
        Naming every trainable layer without a per-sample rule; nothing is replaced.
    """
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction must be 'mean' or 'sum': {loss_reduction!r}")
    problems = unsupported_layers(model)
    if problems:
        raise UnsupportedLayer("no per-sample rule for " + "; ".join(problems))
    swapped = [
        (name, module, PER_SAMPLE_LAYERS[type(module)](module))
        for name, module in _trainable_layers(model)
    ]
    for _, _, stand_in in swapped:
        if isinstance(stand_in, PerSampleConv):
            stand_in.book_keeping = book_keeping
    scaling = None
    if loss_reduction == "mean":
        scaling = model.register_forward_hook(_undo_mean_reduction)
    try:
        for name, _, stand_in in swapped:
            _swap(model, name, stand_in)
        yield
    finally:
        for name, original, _ in swapped:
            _swap(model, name, original)
        for param in model.parameters():
            if hasattr(param, "deferred"):
                del param.deferred
        if scaling is not None:
            scaling.remove()
