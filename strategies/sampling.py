"""Node sampling with a bounded wait (Flower's ``sample_nodes`` waits forever)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.serverapp import Grid

log = logging.getLogger(__name__)


class FederationStopped(RuntimeError):
    """Too few hospitals for longer than ``wait-for-hospitals``: a clean stop."""


@dataclass
class NodeSampler:
    """Waits at most ``wait_s`` for ``min_hospitals`` connected nodes, then samples.

    The sample depends only on ``(seed, round, phase)`` and the sorted connected
    node ids, so a resumed run samples what an uninterrupted run would have.
    """

    min_hospitals: int
    wait_s: float
    seed: int = 0
    poll_s: float = 1.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def connected(self, grid: Grid) -> list[int]:
        """Return connected node ids, waiting up to ``wait_s`` for enough of them."""
        deadline = self.clock() + self.wait_s
        next_note = self.clock()
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.min_hospitals:
                return nodes
            now = self.clock()
            if now >= deadline:
                raise FederationStopped(
                    f"only {len(nodes)} hospital(s) connected, fewer than "
                    f"min-hospitals={self.min_hospitals}, for {self.wait_s:.0f}s "
                    "(wait-for-hospitals)."
                )
            if now >= next_note:  # a line every 30 s, not one per poll
                log.warning(
                    "Waiting for hospitals: %d connected, min-hospitals=%d; giving up "
                    "in %.0fs.",
                    len(nodes),
                    self.min_hospitals,
                    deadline - now,
                )
                next_note = now + 30.0
            self.sleep(min(self.poll_s, max(deadline - now, 0.0)))

    def sample(
        self, grid: Grid, fraction: float, server_round: int, phase: str
    ) -> list[int]:
        """``max(fraction * connected, min_hospitals)`` node ids, sorted."""
        nodes = self.connected(grid)
        size = min(len(nodes), max(int(len(nodes) * fraction), self.min_hospitals))
        rng = random.Random(f"{self.seed}/{server_round}/{phase}")
        return sorted(rng.sample(nodes, size))
