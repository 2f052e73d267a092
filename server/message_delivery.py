"""Message delivery for large simulated federations: one pass over the queued messages per sweep.

Flower's simulation engine (1.42) hands messages to its workers from a thread that,
ten times a second, asks the in-memory LinkState for the next message of *every*
node in turn. Each ask scans every queued message and re-validates each one it
passes (an expiry and federation check), all under the state's lock. A sweep
therefore costs (nodes x queued messages) checks: with all 22,363 Amazon Beauty
users as nodes and 100 messages in flight that is 2.2 million checks per sweep, the
lock is almost never free to store replies, and a 100-client round ran past its
600 s timeout (docs/benchmarks.md).

:func:`install` swaps in a sweep that walks the queued messages once, runs Flower's
own validity check on the undelivered ones, and delivers the oldest undelivered
message of each node, exactly what the per-node asks select. It only replaces the
sweep for Flower's in-memory LinkState, falls back to Flower's own sweep for any
other state, and installs nothing on a Flower version it was not written against.
It applies to ``fedrec simulate``; under ``flwr run`` the engine runs in Flower's
own process and keeps its own sweep.
"""

from __future__ import annotations

import logging
import threading
from queue import Queue
from typing import Any

import flwr

logger = logging.getLogger("fedrec.server")

#: Flower versions whose engine loop and in-memory state this sweep was checked against.
SUPPORTED_FLOWER = ("1.42.",)


def undelivered_per_node(state: Any, node_ids: set[int]) -> list[Any]:
    """The oldest undelivered, still valid message of each node in ``node_ids``, marked delivered."""
    from flwr.server.superlink.linkstate import in_memory_linkstate

    with state.lock:
        pending = [message_id for message_id, message in state.message_ins_store.items()
                   if message.metadata.delivered_at == "" and message.metadata.dst_node_id in node_ids]
        # Flower's own check: drops expired messages and those whose nodes left the federation.
        state._check_stored_messages(set(pending))
        chosen: dict[int, Any] = {}
        for message_id in pending:
            message = state.message_ins_store.get(message_id)
            if message is not None and message.metadata.dst_node_id not in chosen:
                chosen[message.metadata.dst_node_id] = message
        delivered_at = in_memory_linkstate.now().isoformat()
        for message in chosen.values():
            message.metadata.delivered_at = delivered_at
    return list(chosen.values())


def install() -> bool:
    """Replaces the simulation engine's delivery sweep; returns whether it did."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if not flwr.__version__.startswith(SUPPORTED_FLOWER):
        logger.info("Flower %s: keeping its own message delivery", flwr.__version__)
        return False
    original = getattr(vce_api.add_messages_to_queue, "__wrapped__", vce_api.add_messages_to_queue)

    def add_messages_to_queue(state: Any, queue: Queue[Any], nodes_mapping: dict[int, int],
                              f_stop: threading.Event) -> None:
        if not isinstance(state, InMemoryLinkState):
            original(state, queue, nodes_mapping, f_stop)
            return
        node_ids = set(nodes_mapping)
        while not f_stop.is_set():
            for message in undelivered_per_node(state, node_ids):
                queue.put(message)
            f_stop.wait(0.1)

    add_messages_to_queue.__wrapped__ = original  # type: ignore[attr-defined]
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True
