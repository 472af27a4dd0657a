"""Central DP with server-side fixed clipping and hospital-level accounting (DP-FedAvg).

McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, https://arxiv.org/abs/1710.06963

Why our own wrapper rather than Flower's ``DifferentialPrivacyServerSideFixedClipping``:
its accounting path only accepts plain FedAvg with equal client weights and aborts on
a single bad reply, while MedFedAvg screens replies per hospital. Here each sound
hospital update ``w_k - w`` is clipped to L2 norm ``C``; the clipped updates are
summed and divided by the number ``m`` of hospitals *sampled* (not the number that
answered, so a dropped hospital cannot change the scale), and Gaussian noise of std
``sigma * C / m`` is added. Adding or removing one hospital changes the sum by at
most ``C``: the guarantee is hospital-level (user-level), accounted with an Opacus
accountant over rounds at sampling rate ``q = m / N``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from app.privacy.accounting import (
    HistoryEntry,
    compose,
    epsilon_of,
    plan_noise_multiplier,
)
from strategies.screening import Screened, weighted_metrics

log = logging.getLogger(__name__)


def clip_update(
    update: list[np.ndarray], clip_norm: float
) -> tuple[list[np.ndarray], float]:
    """Scale ``update`` (a list of arrays) to L2 norm <= ``clip_norm``.

    Returns the clipped update and its norm before clipping.
    """
    norm = math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [u * scale for u in update], norm


class GaussianNoise:
    """Gaussian noise source for the aggregate.

    numpy's PCG64 (seeded from the OS unless given a seed), or OpenDP's exact
    Gaussian sampler when ``secure`` (slow for large models).
    """

    def __init__(self, *, secure: bool = False, seed: int | None = None) -> None:
        if secure and seed is not None:
            raise ValueError("A seed must not be given for the secure noise source.")
        self.secure = secure
        self.rng = np.random.default_rng(seed)

    def sample(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        if std == 0:
            return np.zeros(shape)
        if not self.secure:
            return self.rng.normal(0.0, std, size=shape)
        import opendp.prelude as dp

        dp.enable_features("contrib")
        size = int(np.prod(shape))
        space = (
            dp.vector_domain(dp.atom_domain(T=float, nan=False), size=size),
            dp.l2_distance(T=float),
        )
        noisy = (space >> dp.m.then_gaussian(scale=std))([0.0] * size)
        return np.asarray(noisy, dtype=np.float64).reshape(shape)


class CentralDP(Strategy):
    """Wraps a medflower strategy (FedAvg/FedProx) with DP-FedAvg aggregation.

    Parameters
    ----------
    strategy
        The wrapped strategy: it samples hospitals, screens replies (its ledger),
        skips rounds below ``min-hospitals`` and handles evaluation; its weighted
        averaging is replaced. Attributes not defined here are delegated to it.
    noise_multiplier
        Noise std relative to ``clip_norm``. Give this or ``target_epsilon``.
    clip_norm
        L2 bound on each hospital's model update.
    delta
        Delta at which epsilon is reported.
    accountant
        ``prv`` or ``rdp`` (Opacus).
    target_epsilon, num_rounds, expected_sample_rate
        Plan the noise multiplier so ``num_rounds`` rounds at
        ``expected_sample_rate`` spend ``target_epsilon``.
    noise
        Noise source (seedable for tests).
    """

    def __init__(
        self,
        strategy: Screened,
        *,
        clip_norm: float,
        delta: float,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
        num_rounds: int = 0,
        expected_sample_rate: float = 1.0,
        accountant: str = "prv",
        noise: GaussianNoise | None = None,
    ) -> None:
        super().__init__()
        if clip_norm <= 0:
            raise ValueError("The clipping norm 'dp-update-clip-norm' must be > 0.")
        if (noise_multiplier > 0) == (target_epsilon > 0):
            raise ValueError("Give exactly one of noise_multiplier or target_epsilon.")
        if target_epsilon > 0:
            if num_rounds < 1:
                raise ValueError("Planning from target_epsilon needs num_rounds >= 1.")
            noise_multiplier = plan_noise_multiplier(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=expected_sample_rate,
                steps=num_rounds,
                mechanism=accountant,
            )
        self.strategy = strategy
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.delta = float(delta)
        self.accountant = accountant
        self.noise = noise or GaussianNoise()
        self.history: list[HistoryEntry] = []
        self.reports: dict[int, dict[str, Any]] = {}
        self._current: ArrayRecord | None = None
        self._sampled: dict[int, tuple[int, int]] = {}

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found here: ledger, record_delivery,
        # round_skipped, min_hospitals, weighted_by_key, ... of the wrapped strategy.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def epsilon(self) -> float:
        """Cumulative hospital-level epsilon of the released global models."""
        return epsilon_of(self.history, delta=self.delta, mechanism=self.accountant)

    def summary(self) -> None:
        log.info(
            "Central DP (hospital-level): clip %.4g, noise multiplier %.4g, delta %g, "
            "%s accountant",
            self.clip_norm,
            self.noise_multiplier,
            self.delta,
            self.accountant,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays
        messages = list(
            self.strategy.configure_train(server_round, arrays, config, grid)
        )
        self._sampled[server_round] = (len(messages), len(list(grid.get_node_ids())))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        inner = self.strategy
        sound = inner._screen(server_round, replies, is_train=True)
        sampled, population = self._sampled.pop(server_round, (0, 0))
        entry = inner.ledger.entry(server_round)
        if len(sound) < inner.min_hospitals or self._current is None or sampled == 0:
            entry["skipped"] = (
                f"{len(sound)} sound training replies, fewer than "
                f"min-hospitals={inner.min_hospitals}"
            )
            log.error(
                "Round %d skipped: %s; the global model is unchanged.",
                server_round,
                entry["skipped"],
            )
            return None, None
        keys = list(self._current.keys())
        current = [self._current[k].numpy().astype(np.float64) for k in keys]
        total = [np.zeros_like(c) for c in current]
        norms = []
        for msg in sound:
            arrays = msg.content[inner.arrayrecord_key]
            update = [
                arrays[k].numpy().astype(np.float64) - c
                for k, c in zip(keys, current, strict=True)
            ]
            clipped, norm = clip_update(update, self.clip_norm)
            norms.append(norm)
            total = [t + u for t, u in zip(total, clipped, strict=True)]
        std = self.noise_multiplier * self.clip_norm / sampled
        new = {}
        for k, c, t in zip(keys, current, total, strict=True):
            dtype = self._current[k].numpy().dtype
            value = c + t / sampled + self.noise.sample(c.shape, std)
            new[k] = Array(np.asarray(value, dtype=dtype))
        rate = sampled / population if population else 1.0
        self.history = compose(
            self.history,
            noise_multiplier=self.noise_multiplier,
            sample_rate=rate,
            steps=1,
        )
        report = {
            "mode": "central",
            "unit": "hospital",
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sample_rate": rate,
            "hospitals_clipped": int(sum(n > self.clip_norm for n in norms)),
            "median_update_norm": float(np.median(norms)),
        }
        self.reports[server_round] = report
        log.info(
            "Round %d central DP: noise std %.4g, %d/%d updates clipped, "
            "epsilon %.4f at delta %g",
            server_round,
            std,
            report["hospitals_clipped"],
            len(norms),
            report["epsilon"],
            self.delta,
        )
        metrics = weighted_metrics([m.content for m in sound], inner.weighted_by_key)
        return ArrayRecord(new), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def privacy_report(self, server_round: int) -> dict[str, Any] | None:
        """Return the round's privacy entry for history.json (None: no release)."""
        return self.reports.get(server_round)

    # -- checkpoint state: the accountant history must survive a resume ------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.state_dict(),
            "central_dp": {
                "mechanism": self.accountant,
                "noise_multiplier": self.noise_multiplier,
                "history": [list(h) for h in self.history],
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.strategy.load_state_dict(state.get("strategy", {}))
        dp_state = state.get("central_dp")
        if dp_state is None:
            raise ValueError("The checkpoint has no central-DP accountant state.")
        if dp_state["mechanism"] != self.accountant:
            raise ValueError(
                f"The checkpoint's accountant is {dp_state['mechanism']!r}, not "
                f"{self.accountant!r}; 'dp-accountant' must not change on resume."
            )
        self.history = [(float(s), float(q), int(n)) for s, q, n in dp_state["history"]]
