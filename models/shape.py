"""Shape descriptors of a segmented structure, and a classifier on them (``shape``).

Many 3D MedMNIST-style sets are binary masks of one organ (AdrenalMNIST3D,
VesselMNIST3D): what tells the classes apart is the structure's size and form,
which a small CNN at CPU budgets learns slowly and overfits. The ``shape`` network
computes a fixed set of global descriptors of each channel, parameter-free (as
radiomics shape features are), standardises them with the federation's means and
standard deviations, and applies a linear head:

- the log of the volume fraction (the intensity-weighted voxel count);
- the centroid, and the log square roots of the principal second moments (the
  structure's extent along its own axes);
- the log surface share (voxels removed by a one-voxel erosion, per unit of volume)
  and a log sphericity (surface per volume^(2/3) in 3D, per volume^(1/2) in 2D);
- per axis, on the mask ``image > 0.5``: the log area of its projection, the log
  of its extent and the log of its largest slice.

The standardisation comes from the hospitals' training splits before round 1
(``query.input_stats``, :mod:`app.server.input_stats`): counts, sums and sums of
squares of the descriptors, no record. Until then it is the identity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

EPS = 1e-4
MASK_LEVEL = 0.5  # ``image > 0.5``: the mask the projection features are taken on


def descriptor_count(spatial_dims: int) -> int:
    """Descriptors per channel: 18 in 3D, 13 in 2D."""
    d = spatial_dims
    return 1 + d + d + 2 + 3 * d


def _grid(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Voxel centres on [-1, 1] per axis, ``(voxels, dims)``."""
    axes = [
        (torch.arange(n, dtype=like.dtype, device=like.device) + 0.5) / n * 2 - 1
        for n in shape
    ]
    return torch.stack([g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")], 1)


def _eroded(w: torch.Tensor) -> torch.Tensor:
    """Minimum over each voxel's face neighbours and itself, outside = 0."""
    d = w.dim() - 1
    padded = nn.functional.pad(w, (1, 1) * d)
    out = w
    for axis in range(1, d + 1):
        for start in (0, 2):
            index = [slice(None)] + [slice(1, -1)] * d
            index[axis] = slice(start, start + w.shape[axis])
            out = torch.minimum(out, padded[tuple(index)])
    return out


def _axis_features(mask: torch.Tensor) -> list[torch.Tensor]:
    """Per axis: log projection area, log extent and log largest slice."""
    d = mask.dim() - 1
    voxels = mask[0].numel()
    proj, extent, largest = [], [], []
    for axis in range(1, d + 1):
        others = tuple(a for a in range(1, d + 1) if a != axis)
        proj.append(mask.any(dim=axis).flatten(1).float().mean(1))
        profile = mask.float().sum(dim=others)  # (B, n): the slices' areas
        n = profile.shape[1]
        index = torch.arange(n, dtype=profile.dtype, device=profile.device)
        present = profile > 0
        hi = torch.where(present, index, torch.full_like(profile, -1)).amax(1)
        lo = torch.where(present, index, torch.full_like(profile, n)).amin(1)
        extent.append((hi - lo + 1).clamp_min(0) / n)
        largest.append(profile.amax(1) / (voxels / n))
    return [torch.stack(f, 1).add(EPS).log() for f in (proj, extent, largest)]


def shape_descriptors(images: torch.Tensor) -> torch.Tensor:
    """Raw descriptors of ``images`` ``(B, C, *spatial)`` on [0, 1]: ``(B, C*K)``.

    Finite for any input, an empty image included.
    """
    batch, channels = images.shape[:2]
    d = images.dim() - 2
    w = images.clamp(0, 1).flatten(0, 1).to(torch.float64)  # (B*C, *spatial)
    flat = w.flatten(1)
    points = _grid(w.shape[1:], w)
    mass = flat.sum(1) + EPS
    centroid = flat @ points / mass[:, None]
    second = torch.einsum("bn,ni,nj->bij", flat, points, points) / mass[:, None, None]
    cov = second - centroid[:, :, None] * centroid[:, None, :]
    eye = torch.eye(d, dtype=w.dtype, device=w.device)
    moments = torch.linalg.eigvalsh(cov + EPS * eye).flip(-1).clamp_min(EPS)
    surface = (w - _eroded(w)).flatten(1).sum(1) + EPS
    parts = [
        (mass / flat.shape[1]).log()[:, None],
        centroid,
        0.5 * moments.log(),
        (surface / mass).log()[:, None],
        (surface / mass ** ((d - 1) / d)).log()[:, None],
        *_axis_features(w > MASK_LEVEL),
    ]
    return torch.cat(parts, 1).reshape(batch, -1).to(images.dtype)


class ShapeDescriptors(nn.Module):
    """:func:`shape_descriptors`, standardised with stored means and scales.

    ``mean`` and ``scale`` are buffers: they travel with the model's arrays, are
    never trained, and are set once by :func:`set_statistics`.
    """

    def __init__(self, spatial_dims: int, in_channels: int) -> None:
        super().__init__()
        self.width = in_channels * descriptor_count(spatial_dims)
        self.register_buffer("mean", torch.zeros(self.width))
        self.register_buffer("scale", torch.ones(self.width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (shape_descriptors(images) - self.mean) / self.scale


class ShapeNet(nn.Module):
    """A linear classifier on standardised shape descriptors (``shape``)."""

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3) or in_channels < 1 or num_classes < 2:
            raise ValueError(
                "shape: spatial_dims 2 or 3, in_channels >= 1 and num_classes >= 2 "
                f"are needed, got {spatial_dims}, {in_channels}, {num_classes}."
            )
        self.descriptors = ShapeDescriptors(spatial_dims, in_channels)
        self.head = nn.Linear(self.descriptors.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.descriptors(images))


# ------------------------------------------------------------------ statistics


def descriptor_layers(model: nn.Module) -> list[ShapeDescriptors]:
    """The model's descriptor layers (none: it needs no input statistics)."""
    return [m for m in model.modules() if isinstance(m, ShapeDescriptors)]


def descriptor_sums(
    images: np.ndarray, batch_size: int = 256
) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, sum and sum of squares of the raw descriptors of ``images``."""
    total = sq = None
    for start in range(0, len(images), batch_size):
        with torch.no_grad():
            chunk = torch.as_tensor(images[start : start + batch_size])
            values = shape_descriptors(chunk.float()).to(torch.float64).numpy()
        total = values.sum(0) if total is None else total + values.sum(0)
        sq = (values**2).sum(0) if sq is None else sq + (values**2).sum(0)
    if total is None or sq is None:
        raise ValueError("shape descriptors: no images to summarise.")
    return len(images), total, sq


def pooled_statistics(
    count: float, total: np.ndarray, sq: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (1 where a descriptor does not vary)."""
    if count < 2:
        raise ValueError(f"shape descriptors: {count} records cannot give a spread.")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return mean, np.where(std > 1e-6, std, 1.0)


def set_statistics(model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
    """Store the standardisation in every descriptor layer of ``model``."""
    for layer in descriptor_layers(model):
        if mean.shape != (layer.width,) or std.shape != (layer.width,):
            raise ValueError(
                f"shape descriptors: {layer.width} means and scales needed, got "
                f"{mean.shape} and {std.shape}."
            )
        layer.mean.copy_(torch.as_tensor(mean, dtype=layer.mean.dtype))
        layer.scale.copy_(torch.as_tensor(std, dtype=layer.scale.dtype))


def fit_statistics(model: nn.Module, images: np.ndarray) -> None:
    """Standardise ``model``'s descriptors on ``images`` (one site, or pooled)."""
    if descriptor_layers(model):
        set_statistics(model, *pooled_statistics(*descriptor_sums(images)))
