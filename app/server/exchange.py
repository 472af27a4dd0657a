"""Send messages to hospitals and collect their replies, polling as fast as is cheap.

Flower's ``Grid.send_and_receive`` pushes the messages, then pulls replies every
0.1 s in simulation and every 3 s in deployment. A round is a train and an
evaluate exchange (secure aggregation adds stages), each ending on a poll: that
sleep was up to ~0.2 s of a 100-hospital simulation round of ~0.7 s, and up to
~6 s of a deployed round. Here a poll follows the previous one after ``ratio``
times the CPU time it took (so polling takes at most ~1/(1 + ratio) of a core, and
less as replies thin out; a wait for the state's lock does not count), never sooner
than ``shortest`` and, while nothing arrives, backing off to ``longest``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid


@dataclass(frozen=True)
class Polling:
    """How often :func:`send_and_receive` asks for replies (seconds)."""

    shortest: float = 0.005
    longest: float = 1.0
    # A pull of 0.5 ms (100 pending replies in simulation) -> 10 ms apart; of 5 ms
    # (1,000, holding the state's lock Flower's engine needs) -> 0.1 s, as Flower.
    ratio: float = 20.0

    def __post_init__(self) -> None:
        if not 0 < self.shortest <= self.longest:
            raise ValueError(
                f"polling needs 0 < shortest <= longest, got {self.shortest}, "
                f"{self.longest}"
            )


POLLING = Polling()


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    polling: Polling = POLLING,
) -> list[Message]:
    """Push ``messages`` and return the replies that arrive within ``timeout``
    seconds (``None``: until every message is answered), as
    ``Grid.send_and_receive`` does.

    Time is the grid's own where it has a ``clock`` and a ``sleep`` (the
    in-process harness keeps virtual time: a reply that never comes times out at
    once), else the process's.
    """
    clock: Callable[[], float] = getattr(grid, "clock", time.monotonic)
    sleep: Callable[[float], None] = getattr(grid, "sleep", time.sleep)
    pending = set(grid.push_messages(messages))
    end = None if timeout is None else clock() + timeout
    replies: list[Message] = []
    idle = polling.shortest
    while pending:
        cpu = time.thread_time()  # the pull's own work, not a wait for Flower's lock
        arrived = list(grid.pull_messages(pending))
        cost = time.thread_time() - cpu
        now = clock()
        replies.extend(arrived)
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        if not pending or (end is not None and now >= end):
            break
        idle = polling.shortest if arrived else min(2 * idle, polling.longest)
        wait = min(max(idle, polling.ratio * cost), polling.longest)
        sleep(wait if end is None else min(wait, end - now))
    return replies
