"""Model updates as one flat vector.

Layout, hospital-side checks, fixed-point encoding and the pseudo-random masks (all
arithmetic modulo 2**64).

Why our own mask generator: Flower's ``pseudo_rand_gen`` folds the 32-byte seed into
a 32-bit NumPy ``RandomState`` seed, so a curious server could search all 2**32
seeds of a self-mask. Masks here are AES-256-CTR keystreams keyed by SHA-256 of the
full seed (a cryptographic PRG), read as uint64 words. Masked words are uint64 and
wrap around, so sums need no modulus bookkeeping: the true sum of at most
``n * quantization_range`` < 2**64 is recovered exactly once every mask is removed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from flwr.app import Array, ArrayRecord
from flwr.common.secure_aggregation.quantization import quantize

_MASK_DOMAIN = b"medflower/secagg/mask/v1"


@dataclass(frozen=True)
class Layout:
    """Key order, shapes and dtypes of a model's arrays.

    Keys are sorted, so both sides agree whatever order a record travels in.
    """

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, arrays: ArrayRecord | Mapping[str, np.ndarray]) -> Layout:
        numpy = _as_numpy(arrays)
        keys = tuple(sorted(numpy))
        return cls(
            keys,
            tuple(tuple(numpy[k].shape) for k in keys),
            tuple(str(numpy[k].dtype) for k in keys),
        )

    @property
    def size(self) -> int:
        """Number of model coordinates."""
        return sum(math.prod(s) for s in self.shapes)

    def flatten(self, arrays: ArrayRecord | Mapping[str, np.ndarray]) -> np.ndarray:
        """One float64 vector; raises ValueError when keys or shapes differ."""
        numpy = _as_numpy(arrays)
        if set(numpy) != set(self.keys):
            missing = sorted(set(self.keys) - set(numpy))
            extra = sorted(set(numpy) - set(self.keys))
            raise ValueError(f"array keys differ (missing {missing}, extra {extra})")
        parts = []
        for key, shape in zip(self.keys, self.shapes, strict=True):
            if tuple(numpy[key].shape) != shape:
                raise ValueError(
                    f"array '{key}' has shape {tuple(numpy[key].shape)}, "
                    f"expected {shape}"
                )
            parts.append(np.asarray(numpy[key], dtype=np.float64).ravel())
        return np.concatenate(parts) if parts else np.zeros(0)

    def unflatten(self, vector: np.ndarray) -> ArrayRecord:
        """Back to an ArrayRecord with the original dtypes (integers rounded)."""
        record = ArrayRecord()
        offset = 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            n = math.prod(shape)
            part = vector[offset : offset + n].reshape(shape)
            if np.dtype(dtype).kind in "iub":
                part = np.rint(part)
            record[key] = Array(np.asarray(part, dtype=dtype))
            offset += n
        return record


def _as_numpy(arrays: ArrayRecord | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(arrays, ArrayRecord):
        return {k: v.numpy() for k, v in arrays.items()}
    return {k: np.asarray(v) for k, v in arrays.items()}


def mask(seed: bytes, length: int) -> np.ndarray:
    """``length`` uniform uint64 words from AES-256-CTR keyed by SHA-256(seed)."""
    key = hashlib.sha256(_MASK_DOMAIN + seed).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


@dataclass(frozen=True)
class Clipped:
    """A hospital's update after the hospital-side protections."""

    update: np.ndarray
    clipped_fraction: float
    l2_norm: float


def protect_update(
    update: np.ndarray, *, clipping_range: float, l2_clip: float = 0.0
) -> Clipped:
    """Hospital-side checks the server can no longer do on a masked update.

    Raises ValueError on NaN/inf; scales to L2 norm ``l2_clip`` if set; clips every
    coordinate to ``[-clipping_range, clipping_range]`` (the fixed-point range).
    """
    if not np.isfinite(update).all():
        raise ValueError("the local update holds NaN or infinite values")
    norm = float(np.linalg.norm(update))
    if l2_clip > 0 and norm > l2_clip:
        update = update * (l2_clip / norm)
    outside = np.abs(update) > clipping_range
    return Clipped(
        np.clip(update, -clipping_range, clipping_range),
        float(outside.mean()) if update.size else 0.0,
        norm,
    )


def weight_level(weight: float, *, max_weight: float, quantization_range: int) -> int:
    """Return the weight in fixed point: ``round(min(w, W) / W * T)``, >= 1."""
    ratio = min(max(weight, 0.0), max_weight) / max_weight
    return max(1, round(ratio * quantization_range))


def encode(
    update: np.ndarray,
    level: int,
    *,
    clipping_range: float,
    quantization_range: int,
) -> np.ndarray:
    """``[level, quantize(update * level / T)]`` as uint64 (before masking).

    ``update`` must already lie in ``[-c, c]``; scaling by ``level / T <= 1`` keeps
    it there. Stochastic rounding (Flower's ``quantize``) is unbiased.
    """
    scaled = update * (level / quantization_range)
    levels = quantize([scaled], clipping_range, quantization_range)[0]
    out = np.empty(update.size + 1, dtype=np.uint64)
    out[0] = level
    out[1:] = levels.astype(np.uint64)
    return out


def decode_sum(
    total: np.ndarray, count: int, *, clipping_range: float, quantization_range: int
) -> tuple[np.ndarray, float]:
    """Decode the unmasked sum of ``count`` encodings.

    Returns ``(sum_i r_i * u_i, sum_i r_i)`` where ``r_i = level_i / T`` is
    hospital i's weight ratio.
    """
    step = 2.0 * clipping_range / quantization_range
    weighted = total[1:].astype(np.float64) * step - count * clipping_range
    return weighted, float(total[0]) / quantization_range
