"""Secure aggregators by ``aggregation-encryption`` name, built from the run config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.secagg.aggregator import SecureAggregator, SecureSum
from app.secagg.params import SecAggParams


def _secaggplus(params: SecAggParams, timeout: float | None) -> SecureAggregator:
    from app.secagg.secaggplus import SecAggPlusAggregator

    return SecAggPlusAggregator(params, timeout=timeout)


def _ckks(params: SecAggParams, timeout: float | None) -> SecureAggregator:
    from app.secagg.ckks import CKKSAggregator

    return CKKSAggregator(params, timeout=timeout)


AGGREGATORS: dict[str, Callable[[SecAggParams, float | None], SecureAggregator]] = {
    "masking": _secaggplus,
    "ckks": _ckks,
}


def params_from_config(cfg: Any, **overrides: Any) -> SecAggParams:
    """SecAggParams from a RunConfig's ``secagg-*`` keys (raises ValueError)."""
    values = {
        "num_shares": cfg.secagg_num_shares,
        "threshold": cfg.secagg_reconstruction_threshold,
        "clipping_range": cfg.secagg_clipping_range,
        "quantization_range": cfg.secagg_quantization_range,
        "max_weight": cfg.secagg_max_weight,
    }
    values.update(overrides)
    return SecAggParams(**values)


def secure_aggregator(cfg: Any, **overrides: Any) -> SecureAggregator | None:
    """Build the aggregator a RunConfig asks for (None when it is off)."""
    if not cfg.secure_aggregation:
        return None
    factory = AGGREGATORS[cfg.aggregation_encryption]
    return factory(params_from_config(cfg, **overrides), cfg.round_timeout)


__all__ = [
    "AGGREGATORS",
    "SecAggParams",
    "SecureAggregator",
    "SecureSum",
    "params_from_config",
    "secure_aggregator",
]
