"""A Grid that asks the SuperLink for replies soon after it sends, instead of every 3 seconds.

Flower's deployment grid (1.42, ``flwr.superlink.grid.http_grid``) pushes a round's
messages, then asks for the replies every 3 s until all have come. A secure round is two
exchanges (masked updates, then the unmask step), so on average about 3 s of every
deployed round was the server waiting to ask (docs/benchmarks.md, "Deployment round
time"). :class:`PromptGrid` asks after 50 ms, and doubles the wait up to 1 s while
nothing new arrives, starting again from 50 ms after each reply: a reply is picked up
within a few tens of milliseconds of arriving while the rounds are busy, and an idle
wait still costs the SuperLink at most one request a second. The simulation's in-memory
grid already asks every 0.1 s and is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

#: The first wait before asking for replies, and the longest wait between two asks.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0


class PromptGrid(Grid):
    """``grid`` with a prompter :meth:`send_and_receive`; everything else is ``grid``'s own."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Pushes ``messages`` and collects their replies until all have come or ``timeout`` seconds pass.

        The same contract as Flower's: the replies that came in time, in arrival order.
        """
        pending = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = FIRST_POLL_SECONDS
        while pending:
            arrived = list(self.grid.pull_messages(pending))
            replies += arrived
            pending -= {reply.metadata.reply_to_message_id for reply in arrived}
            left = None if deadline is None else deadline - time.monotonic()
            if not pending or (left is not None and left <= 0):
                break
            wait = FIRST_POLL_SECONDS if arrived else min(2 * wait, MAX_POLL_SECONDS)
            time.sleep(wait if left is None else min(wait, left))
        return replies

    # -- the rest is the wrapped grid's --------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)
