"""MONAI transforms for imaging data: intensity scaling, resizing, augmentation.

Scaling and resizing run once when a site loads its images (deterministic, no
randomness); augmentation runs on each training batch, from a random generator
seeded by the hospital and the round, so a run is reproducible and no two
hospitals draw the same augmentations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.layers import AffineTransform
from monai.transforms import Resize, ScaleIntensity, ScaleIntensityRange
from torch.utils.data import Dataset, TensorDataset, default_collate

from data.spec import Split


def scale_intensity(images: np.ndarray) -> np.ndarray:
    """Map intensities to [0, 1]: ``(N, C, *spatial)`` in, float32 out.

    8-bit data keep their absolute scale (0..255 -> 0..1), so differences between
    acquisitions survive as they would in the clinic; any other type (16-bit
    DICOM, float NIfTI) is min-max scaled per image, since its range is
    scanner-specific.
    """
    if images.dtype == np.uint8:
        scaler = ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0)
        return np.asarray(scaler(images.astype(np.float32)), dtype=np.float32)
    per_image = ScaleIntensity(minv=0.0, maxv=1.0)
    return (
        np.stack(
            [
                np.asarray(per_image(img.astype(np.float32)), dtype=np.float32)
                for img in images
            ]
        )
        if len(images)
        else images.astype(np.float32)
    )


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, C, *spatial)`` images so every spatial side is ``size``.

    The batch is folded into MONAI's channel axis (Resize treats channels
    independently), so the whole set is resized in one call. Shrinking uses area
    averaging (no aliasing), enlarging uses (tri)linear interpolation.
    """
    spatial = images.shape[2:]
    if size <= 0 or all(s == size for s in spatial):
        return images.astype(np.float32, copy=False)
    mode = (
        "area"
        if size < min(spatial)
        else ("bilinear" if len(spatial) == 2 else "trilinear")
    )
    n, c = images.shape[:2]
    folded = images.reshape(n * c, *spatial).astype(np.float32)
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = Resize(spatial_size=(size,) * len(spatial), mode=mode, **kwargs)(folded)
    return np.asarray(out, dtype=np.float32).reshape(n, c, *(size,) * len(spatial))


class BatchAugment:
    """Seeded random flip, rotation, zoom, shift and gain on a whole batch.

    Used as a DataLoader ``collate_fn``: each image of the batch gets its own draw.

    Mild on purpose: diagnosis depends on lesion shape and contrast, which strong
    deformations would change. Batched because MONAI's per-image random
    transforms cost ~15-25 ms per 28x28 image on these CPUs (10 s per BreastMNIST
    epoch), against ~0.1 ms per image for one warp of the batch through MONAI's
    ``AffineTransform`` layer.
    """

    def __init__(
        self,
        spatial_dims: int,
        seed: int,
        *,
        prob: float = 0.5,
        max_rotation: float = 0.26,
        max_zoom: float = 0.1,
        max_shift: float = 0.1,
        max_gain: float = 0.1,
    ) -> None:
        self.dims = spatial_dims
        self.generator = torch.Generator().manual_seed(seed)
        self.prob, self.max_rotation, self.max_zoom = prob, max_rotation, max_zoom
        self.max_shift, self.max_gain = max_shift, max_gain
        self.warp = AffineTransform(
            normalized=True,
            reverse_indexing=False,
            padding_mode="border",
            align_corners=False,
        )

    def _uniform(self, n: int, *shape: int, bound: float) -> torch.Tensor:
        return (torch.rand(n, *shape, generator=self.generator) * 2 - 1) * bound

    def _chosen(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < self.prob

    def _rotation(self, n: int) -> torch.Tensor:
        if self.dims == 2:
            a = self._uniform(n, bound=self.max_rotation)
            c, s = torch.cos(a), torch.sin(a)
            return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        rot = torch.eye(3).repeat(n, 1, 1)
        for axis in range(3):  # small rotation about each axis in turn
            a = self._uniform(n, bound=self.max_rotation)
            c, s = torch.cos(a), torch.sin(a)
            m = torch.eye(3).repeat(n, 1, 1)
            i, j = [k for k in range(3) if k != axis]
            m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
            rot = rot @ m
        return rot

    def __call__(
        self, batch: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> list[torch.Tensor]:
        x, y = default_collate(batch)
        n, d = len(x), self.dims
        if n == 0:
            return [x, y]
        flip = self._chosen(n).view(n, *([1] * (x.dim() - 1)))
        x = torch.where(flip, x.flip(-1), x)
        linear = self._rotation(n) * (1 + self._uniform(n, 1, 1, bound=self.max_zoom))
        theta = torch.cat([linear, self._uniform(n, d, 1, bound=self.max_shift)], -1)
        identity = torch.cat([torch.eye(d), torch.zeros(d, 1)], -1).expand(n, d, d + 1)
        theta = torch.where(self._chosen(n).view(n, 1, 1), theta, identity)
        x = self.warp(x, theta)
        gain = 1 + self._uniform(n, bound=self.max_gain) * self._chosen(n)
        return [x * gain.view(n, *([1] * (x.dim() - 1))), y]


@dataclass(frozen=True)
class ImageSplit(Split):
    """A split of images ``(N, C, *spatial)`` that may be augmented in training.

    ``augment_seed`` is the hospital's own seed; ``None`` means no augmentation
    (held-out and test splits are never augmented).
    """

    augment_seed: int | None = None

    def training_dataset(self, seed: int) -> tuple[Dataset, Callable | None]:
        """Return a torch Dataset over this split and its batch augmentation.

        ``seed`` varies per round; combined with the hospital's seed it gives each
        hospital and round its own augmentation stream.
        """
        dataset = TensorDataset(
            torch.as_tensor(self.x, dtype=torch.float32),
            torch.as_tensor(self.y, dtype=torch.long),
        )
        if self.augment_seed is None:
            return dataset, None
        state = np.random.SeedSequence([self.augment_seed, seed]).generate_state(1)
        mixed = int(state[0])
        return dataset, BatchAugment(self.x.ndim - 2, mixed)
