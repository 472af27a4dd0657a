"""MONAI transforms for imaging data: intensity scaling, resizing, augmentation.

Scaling and resizing run once when a site loads its images (deterministic, no
randomness); augmentation runs per sample during local training, from a random
state seeded by the hospital and the round, so a run is reproducible and no two
hospitals draw the same augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffine,
    RandFlip,
    RandScaleIntensity,
    Resize,
    ScaleIntensity,
    ScaleIntensityRange,
)
from torch.utils.data import Dataset

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


def augmentation(spatial_dims: int, seed: int) -> Compose:
    """Random left-right flip, small rotation/zoom/shift and intensity gain.

    Mild on purpose: diagnosis depends on lesion shape and contrast, which strong
    deformations would change.
    """
    rotate = (0.26,) if spatial_dims == 2 else (0.26, 0.26, 0.26)  # ~15 degrees
    transform = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=spatial_dims - 1),
            RandAffine(
                prob=0.5,
                rotate_range=rotate,
                scale_range=0.1,
                translate_range=2.0,
                padding_mode="border",
            ),
            RandScaleIntensity(factors=0.1, prob=0.5),
        ]
    )
    transform.set_random_state(seed=seed % (2**32))
    return transform


@dataclass(frozen=True)
class ImageSplit(Split):
    """A split of images ``(N, C, *spatial)`` that may be augmented in training.

    ``augment_seed`` is the hospital's own seed; ``None`` means no augmentation
    (held-out and test splits are never augmented).
    """

    augment_seed: int | None = None

    def training_dataset(self, seed: int) -> Dataset:
        """Return a torch Dataset over this split, augmenting when configured.

        ``seed`` varies per round; combined with the hospital's seed it gives each
        hospital and round its own augmentation stream.
        """
        x = torch.as_tensor(self.x, dtype=torch.float32)
        y = torch.as_tensor(self.y, dtype=torch.long)
        if self.augment_seed is None:
            return torch.utils.data.TensorDataset(x, y)
        mixed = int(
            np.random.SeedSequence([self.augment_seed, seed]).generate_state(1)[0]
        )
        return AugmentedImages(x, y, augmentation(x.dim() - 2, mixed))


class AugmentedImages(Dataset):
    """Applies a MONAI random transform to each image as it is drawn."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Compose) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(self.x[index])
        # MONAI returns a MetaTensor; plain tensors keep Opacus and collation simple.
        return torch.as_tensor(image).as_subclass(torch.Tensor).float(), self.y[index]
