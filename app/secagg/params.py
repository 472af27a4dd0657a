"""SecAgg+ parameters: validated once, with defaults derived from the round size."""

from __future__ import annotations

import math
from dataclasses import dataclass

WEIGHTINGS = ("examples", "unit")
MAX_QUANTIZATION_RANGE = 2**30  # Flower's quantize() rounds into int32


def default_num_shares(sample_size: int) -> int:
    """Shares per secret for a round of ``sample_size`` hospitals.

    Everyone (plain SecAgg) for small federations, else an odd ``2 * ceil(log2 n)
    + 1`` neighbours on a ring (SecAgg+, Bell et al. 2020).
    """
    if sample_size <= 10:
        return sample_size
    return min(sample_size, 2 * math.ceil(math.log2(sample_size)) + 1)


def default_threshold(num_shares: int) -> int:
    """Return a strict majority of the shares (and at least 2)."""
    return max(2, num_shares // 2 + 1)


@dataclass(frozen=True)
class SecAggParams:
    """What the server asks of every hospital in one SecAgg+ round.

    Parameters
    ----------
    num_shares : int
        Shares each secret is split into (= neighbours incl. the hospital itself);
        0 derives it from the number of hospitals sampled in the round.
    threshold : int
        Shares needed to reconstruct a secret; 0 derives a strict majority.
    clipping_range : float
        Each coordinate of a hospital's update ``w_local - w_global`` is clipped to
        ``[-clipping_range, clipping_range]`` by the hospital before masking.
    quantization_range : int
        Fixed-point levels over ``[-clipping_range, clipping_range]`` (<= 2**30).
    max_weight : float
        Public bound on a hospital's weight (its ``num-examples``); larger weights
        are capped by the hospital.
    weighting : str
        ``examples`` (FedAvg weights) or ``unit`` (every hospital weighs 1, as
        hospital-level central DP needs).
    l2_clip : float
        If > 0, hospitals scale their update to this L2 norm before masking
        (hospital-side clipping for central DP); 0 disables it.
    """

    num_shares: int = 0
    threshold: int = 0
    clipping_range: float = 2.0
    quantization_range: int = 2**30
    max_weight: float = 100_000.0
    weighting: str = "examples"
    l2_clip: float = 0.0

    def __post_init__(self) -> None:
        if self.num_shares < 0 or self.num_shares == 1:
            raise ValueError(
                f"secagg-num-shares must be 0 (auto) or >= 2, got {self.num_shares}."
            )
        if self.threshold < 0 or self.threshold == 1:
            raise ValueError(
                "secagg-reconstruction-threshold must be 0 (auto) or >= 2, got "
                f"{self.threshold}."
            )
        if self.num_shares and self.threshold:
            check_threshold(self.num_shares, self.threshold)
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ValueError(
                f"secagg-clipping-range must be > 0, got {self.clipping_range}."
            )
        if not 2**8 <= self.quantization_range <= MAX_QUANTIZATION_RANGE:
            raise ValueError(
                "secagg-quantization-range must be in [2**8, 2**30], got "
                f"{self.quantization_range}."
            )
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"secagg-max-weight must be > 0, got {self.max_weight}.")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}."
            )
        if not (math.isfinite(self.l2_clip) and self.l2_clip >= 0):
            raise ValueError(f"l2-clip must be >= 0, got {self.l2_clip}.")

    def for_round(self, sample_size: int) -> tuple[int, int]:
        """``(num_shares, threshold)`` for a round with ``sample_size`` hospitals."""
        shares = min(self.num_shares or default_num_shares(sample_size), sample_size)
        threshold = self.threshold or default_threshold(shares)
        check_threshold(shares, threshold)
        return shares, threshold


def check_threshold(num_shares: int, threshold: int) -> None:
    """Threshold must be a strict majority of the shares and at least 2.

    Why a majority: each holder answers one unmask request per round with either a
    hospital's self-mask share or its key share, never both. Two disjoint sets of
    ``threshold`` holders cannot exist among ``num_shares`` holders when
    ``2 * threshold > num_shares``, so a server that lies about who dropped cannot
    collect both secrets of one hospital.
    """
    if not 2 <= threshold <= num_shares or 2 * threshold <= num_shares:
        raise ValueError(
            f"secagg-reconstruction-threshold={threshold} must be a strict majority "
            f"of secagg-num-shares={num_shares} (> {num_shares // 2}, <= {num_shares}) "
            "and at least 2."
        )
