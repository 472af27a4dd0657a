"""Our round loop, used instead of ``Strategy.start()``.

It adds what ``start()`` lacks for long multi-site runs: starting at any round
(resume), a hook after each round (checkpoints), per-phase reply timeouts with
the missing hospitals named, skipped rounds, and a clean stop when the
federation stays below its minimum.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from app.server.averaging import ModelEMA
from app.server.exchange import send_and_receive
from strategies.sampling import FederationStopped
from strategies.screening import Screened

log = logging.getLogger(__name__)

# (round, global arrays the next round trains from, the round's model). The two
# differ only under weight averaging (``model-ema``), where the model is the average.
RoundHook = Callable[[int, ArrayRecord, ArrayRecord], None]


def evaluation_round(server_round: int, every: int, last: int) -> bool:
    """Whether round ``server_round`` is evaluated (``evaluate-every``).

    Every ``every``-th round, round 0 (the initial model) and the ``last`` round,
    whose metrics are the run's final ones.
    """
    return server_round % every == 0 or server_round == last


@dataclass
class RunResult:
    """Final arrays, the last round completed, and why the run stopped early.

    ``arrays`` are the global arrays training would continue from; ``averaged``
    the weight average under ``model-ema`` (None without averaging).
    """

    arrays: ArrayRecord
    last_round: int
    stopped: str | None = None
    averaged: ArrayRecord | None = None

    @property
    def model(self) -> ArrayRecord:
        """The run's model: the weight average, else the global arrays."""
        return self.arrays if self.averaged is None else self.averaged


@dataclass
class RoundRunner:
    """Drives ``strategy`` over ``grid`` from ``start_round`` to ``num_rounds``.

    Parameters
    ----------
    strategy
        A medflower strategy (Flower strategy + :class:`Screened`).
    grid
        Flower's Grid.
    num_rounds
        Last round to run.
    round_timeout
        Seconds to wait for replies in each train or evaluate phase; hospitals that
        have not answered by then are left out of the round.
    wait_for_hospitals
        Seconds the federation may stay below ``min-hospitals`` (rounds skipped
        one after another) before the run stops.
    round_config
        Per-round additions to ``train_config`` (the round's learning rate).
    evaluate_fn
        Server-side evaluation and reporting of each round's model (and round 0
        on a fresh start); its return value is not used here.
    after_round
        Hooks called after each completed round (selection, checkpointing), in
        order, with the round's training arrays and its model.
    averaging
        Server-side weight averaging (``model-ema``): each round's model is the
        average, evaluated by the hospitals and the server; training continues
        from the raw global arrays. Off (``decay=0``) by default.
    evaluate_every
        The hospitals evaluate the round's model only on the rounds
        :func:`evaluation_round` picks (``evaluate-every``); 1: every round.
    """

    strategy: Screened
    grid: Grid
    num_rounds: int
    round_timeout: float
    wait_for_hospitals: float
    train_config: ConfigRecord
    evaluate_config: ConfigRecord
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
    after_round: Sequence[RoundHook] = ()
    round_config: Callable[[int], dict[str, float]] | None = None
    averaging: ModelEMA = field(default_factory=lambda: ModelEMA(0.0))
    evaluate_every: int = 1
    clock: Callable[[], float] = time.monotonic

    def _exchange(
        self, phase: str, server_round: int, messages: Iterable[Message]
    ) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        replies = send_and_receive(self.grid, messages, self.round_timeout)
        self.strategy.record_delivery(
            server_round,
            phase,
            [m.metadata.dst_node_id for m in messages],
            replies,
            self.round_timeout,
        )
        return replies

    def _train(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        extra = self.round_config(server_round) if self.round_config else {}
        config = ConfigRecord({**self.train_config, **extra})
        messages = self.strategy.configure_train(
            server_round, arrays, config, self.grid
        )
        replies = self._exchange("train", server_round, messages)
        new_arrays, _ = self.strategy.aggregate_train(server_round, replies)
        return arrays if new_arrays is None else new_arrays

    def _evaluate(self, server_round: int, arrays: ArrayRecord) -> None:
        config = ConfigRecord(dict(self.evaluate_config))
        messages = self.strategy.configure_evaluate(
            server_round, arrays, config, self.grid
        )
        replies = self._exchange("evaluate", server_round, messages)
        self.strategy.aggregate_evaluate(server_round, replies)

    def run(self, arrays: ArrayRecord, start_round: int = 1) -> RunResult:
        """Run rounds ``start_round..num_rounds`` starting from global ``arrays``."""
        if start_round == 1 and self.evaluate_fn is not None:
            self.evaluate_fn(0, arrays)
        model = self.averaging.model(arrays)  # a resumed run's average
        below_min_since: float | None = None
        for server_round in range(start_round, self.num_rounds + 1):
            log.info("[ROUND %d/%d]", server_round, self.num_rounds)
            started = self.clock()
            try:
                trained = self._train(server_round, arrays)
            except FederationStopped as stop:
                return self._stopped(
                    arrays, self._average(model), server_round - 1, str(stop)
                )
            if trained is not arrays:  # a skipped round leaves the average as it was
                arrays, model = trained, self.averaging.update(trained)
            stop_reason = None
            try:
                if evaluation_round(server_round, self.evaluate_every, self.num_rounds):
                    self._evaluate(server_round, model)
            except FederationStopped as stop:
                stop_reason = str(stop)
            if self.strategy.round_skipped(server_round):
                below_min_since = (
                    started if below_min_since is None else below_min_since
                )
                below_for = self.clock() - below_min_since
                if stop_reason is None and below_for > self.wait_for_hospitals:
                    stop_reason = (
                        f"rounds have had fewer sound replies than min-hospitals="
                        f"{self.strategy.min_hospitals} for {below_for:.0f}s, longer "
                        f"than wait-for-hospitals={self.wait_for_hospitals:.0f}s."
                    )
            else:
                below_min_since = None
            if self.evaluate_fn is not None:
                self.evaluate_fn(server_round, model)
            for hook in self.after_round:
                hook(server_round, arrays, model)
            if stop_reason is not None:
                return self._stopped(
                    arrays, self._average(model), server_round, stop_reason
                )
        return RunResult(arrays, self.num_rounds, averaged=self._average(model))

    def _average(self, model: ArrayRecord) -> ArrayRecord | None:
        return model if self.averaging.enabled else None

    @staticmethod
    def _stopped(
        arrays: ArrayRecord,
        averaged: ArrayRecord | None,
        last_round: int,
        reason: str,
    ) -> RunResult:
        log.error("Federation stopped after round %d: %s", last_round, reason)
        return RunResult(arrays, last_round, stopped=reason, averaged=averaged)
