"""Shared server-optimiser state of FedAdam and FedYogi (Reddi et al., 2021).

"Adaptive Federated Optimization", ICLR 2021, https://arxiv.org/abs/2003.00295
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from strategies.screening import Screened


def _check_fedopt(eta: float, beta_1: float, beta_2: float, tau: float) -> None:
    if not eta > 0:
        raise ValueError(f"eta (server learning rate) must be > 0, got {eta}.")
    if not 0 <= beta_1 < 1:
        raise ValueError(f"beta-1 must be in [0, 1), got {beta_1}.")
    if not 0 <= beta_2 < 1:
        raise ValueError(f"beta-2 must be in [0, 1), got {beta_2}.")
    if not tau > 0:
        raise ValueError(f"tau (adaptivity) must be > 0, got {tau}.")


class ServerOptimizer(Screened):
    """Screening plus checkpointable first and second moments ``m_t`` / ``v_t``.

    Combined with Flower's ``FedAdam`` or ``FedYogi``: their update reads the
    round's global arrays from ``current_arrays``, which we set before sampling.
    """

    current_arrays: dict[str, np.ndarray] | None
    m_t: dict[str, np.ndarray] | None
    v_t: dict[str, np.ndarray] | None

    def __init__(
        self,
        *,
        eta: float,
        beta_1: float,
        beta_2: float,
        tau: float,
        learning_rate: float = 0.1,
        **kwargs: Any,
    ) -> None:
        _check_fedopt(eta, beta_1, beta_2, tau)
        # eta_l is the hospitals' learning rate; Flower only logs it.
        super().__init__(
            eta=eta,
            eta_l=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            tau=tau,
            **kwargs,
        )

    def _before_train(self, arrays: ArrayRecord) -> None:
        self.current_arrays = {k: a.numpy() for k, a in arrays.items()}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The optimizer step, with untrained arrays kept as they were sent.

        Hospitals return a buffer (``fixed_keys``) or a key that stays with them
        (``local_keys``) exactly as sent, so its mean update is zero up to the
        rounding of the weighted mean, and Adam would scale that rounding up to a
        step of about ``eta`` every round.
        """
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self.current_arrays is None:
            return arrays, metrics
        kept = (self.fixed_keys | self.local_keys) & self.current_arrays.keys()
        if not kept:
            return arrays, metrics
        values = {k: a.numpy() for k, a in arrays.items()}
        values.update({k: self.current_arrays[k] for k in kept})
        kept_arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})
        return kept_arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["m_t"] = dict(self.m_t) if self.m_t else {}
        state["v_t"] = dict(self.v_t) if self.v_t else {}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.m_t = {k: np.asarray(v) for k, v in state.get("m_t", {}).items()} or None
        self.v_t = {k: np.asarray(v) for k, v in state.get("v_t", {}).items()} or None
