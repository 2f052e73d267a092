"""The one-pass delivery sweep picks what Flower's per-node asks would pick."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from server.message_delivery import undelivered_per_node


class FakeState:
    """The parts of Flower's InMemoryLinkState the sweep touches."""

    def __init__(self, messages: list[tuple[str, int, str]], expired: set[str] = frozenset()) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = {message_id: SimpleNamespace(
            message_id=message_id, metadata=SimpleNamespace(dst_node_id=node, delivered_at=delivered))
            for message_id, node, delivered in messages}
        self.expired = set(expired)
        self.checked: list[set[str]] = []

    def _check_stored_messages(self, message_ids: set[str]) -> None:
        self.checked.append(set(message_ids))
        for message_id in message_ids & self.expired:
            del self.message_ins_store[message_id]


def test_oldest_valid_undelivered_message_of_each_known_node_is_delivered_once() -> None:
    state = FakeState([
        ("a1", 1, ""), ("b1", 2, "earlier"), ("a2", 1, ""), ("b2", 2, ""), ("c1", 3, ""), ("x1", 9, ""),
    ], expired={"c1"})
    first = undelivered_per_node(state, {1, 2, 3})
    # Node 1: its oldest (a1); node 2: b1 was delivered, so b2; node 3: only an expired one; node 9: not ours.
    assert [message.message_id for message in first] == ["a1", "b2"]
    assert all(message.metadata.delivered_at for message in first)
    assert state.checked == [{"a1", "a2", "b2", "c1"}] and "c1" not in state.message_ins_store
    second = undelivered_per_node(state, {1, 2, 3})
    assert [message.message_id for message in second] == ["a2"]
    assert undelivered_per_node(state, {1, 2, 3}) == []
