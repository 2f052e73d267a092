"""PromptGrid: Flower's send_and_receive contract, asking for replies soon after they can have come."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from server import prompt_grid
from server.prompt_grid import MAX_POLL_SECONDS, PromptGrid


class ScriptedGrid:
    """Replies become available at given times on a fake clock; records each ask for replies."""

    def __init__(self, clock: list[float], arrivals: dict[str, float]) -> None:
        self.clock = clock
        self.arrivals = arrivals
        self.asks: list[float] = []
        self.handed: set[str] = set()

    def push_messages(self, messages):
        return [message.id for message in messages]

    def pull_messages(self, message_ids):
        self.asks.append(self.clock[0])
        ready = [message_id for message_id in message_ids
                 if self.arrivals.get(message_id, float("inf")) <= self.clock[0] and message_id not in self.handed]
        self.handed |= set(ready)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id)) for message_id in ready]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(prompt_grid.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(prompt_grid.time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    return now


def messages(*ids: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=message_id) for message_id in ids]


def test_each_reply_is_collected_soon_after_it_arrives_and_idle_asks_back_off(clock: list[float]) -> None:
    grid = ScriptedGrid(clock, {"a": 0.3, "b": 4.0, "c": 4.02})
    replies = PromptGrid(grid).send_and_receive(messages("a", "b", "c"), timeout=60)  # type: ignore[arg-type]
    assert sorted(reply.metadata.reply_to_message_id for reply in replies) == ["a", "b", "c"]
    # Collected within one wait of arriving: 50 ms after a reply, at most 1 s while idle (Flower: 3 s).
    for message_id, arrived in grid.arrivals.items():
        first_ask_after = min(ask for ask in grid.asks if ask >= arrived)
        assert first_ask_after - arrived <= MAX_POLL_SECONDS + 1e-9, message_id
    assert min(ask for ask in grid.asks if ask >= 0.3) - 0.3 <= 0.2  # early on, the waits are short
    assert clock[0] <= 4.02 + MAX_POLL_SECONDS  # done at the first ask after the last reply
    # Backing off: about 4 s of waiting took far fewer asks than a 50 ms poll would (80).
    assert len(grid.asks) <= 12


def test_the_timeout_returns_the_replies_that_came(clock: list[float]) -> None:
    grid = ScriptedGrid(clock, {"a": 0.2})
    replies = list(PromptGrid(grid).send_and_receive(messages("a", "never"), timeout=5.0))  # type: ignore[arg-type]
    assert [reply.metadata.reply_to_message_id for reply in replies] == ["a"]
    assert clock[0] == pytest.approx(5.0)  # waited out the timeout, not past it
