"""The server's exchange with hospitals: push, then poll for replies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from app.server.exchange import POLLING, Polling, send_and_receive


@dataclass
class FakeGrid:
    """Answers message ``i`` once the fake clock reaches ``answer_at[i]``; each
    pull costs ``pull_cost`` seconds of that clock and of real CPU. Replies carry
    only what the exchange reads: the id of the message they answer.
    """

    answer_at: list[float]
    pull_cost: float = 0.0
    now: float = 0.0
    pulls: int = 0
    sleeps: list[float] = field(default_factory=list)

    def push_messages(self, messages):
        return [str(i) for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        self.now += self.pull_cost
        busy_until = time.thread_time() + self.pull_cost  # the pull's CPU work
        while time.thread_time() < busy_until:
            pass
        ready = sorted(i for i in ids if self.answer_at[int(i)] <= self.now)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ready
        ]

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _exchange(grid: FakeGrid, timeout: float | None, polling: Polling = POLLING):
    messages = [object() for _ in grid.answer_at]
    return send_and_receive(grid, messages, timeout, polling)  # the grid's time


def _reply_ids(replies):
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_every_reply_is_collected_and_the_exchange_ends_with_the_last():
    grid = FakeGrid(answer_at=[0.0, 0.02, 0.31])
    replies = _exchange(grid, timeout=10.0)
    assert _reply_ids(replies) == ["0", "1", "2"]
    # seen soon after it came: Flower's own loop, pulling every 0.1 s (3 s
    # deployed), would see it at 0.4
    assert 0.31 <= grid.now < 0.31 + 0.05


def test_polls_back_off_while_nothing_arrives_and_never_wait_past_longest():
    grid = FakeGrid(answer_at=[0.0, 30.0])
    _exchange(grid, timeout=None, polling=Polling(shortest=0.01, longest=1.0))
    assert grid.sleeps[0] == pytest.approx(0.01)  # right after a reply
    assert grid.sleeps[1] == pytest.approx(0.02)  # nothing new: twice as long
    assert max(grid.sleeps) == pytest.approx(1.0)
    assert grid.pulls < 60  # 30 s at the 1-s ceiling, not 3,000 polls of 10 ms


def test_a_slow_pull_spaces_the_polls_by_ratio_times_its_cost():
    grid = FakeGrid(answer_at=[0.0] + [0.5] * 3, pull_cost=0.005)
    _exchange(grid, timeout=None, polling=Polling(shortest=0.001, ratio=10.0))
    assert min(grid.sleeps) == pytest.approx(0.05, rel=0.3)


def test_the_timeout_returns_what_arrived_and_never_sleeps_past_it():
    grid = FakeGrid(answer_at=[0.1, 100.0])
    replies = _exchange(grid, timeout=5.0)
    assert _reply_ids(replies) == ["0"]
    assert grid.now == pytest.approx(5.0)


@pytest.mark.parametrize("shortest, longest", [(0.0, 1.0), (2.0, 1.0)])
def test_polling_refuses_an_empty_or_inverted_range(shortest, longest):
    with pytest.raises(ValueError, match="shortest <= longest"):
        Polling(shortest=shortest, longest=longest)
