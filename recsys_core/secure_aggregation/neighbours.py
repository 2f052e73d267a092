"""The neighbour graph of a round: each device masks with, and shares secrets with, its neighbours only.

A circulant graph (a Harary graph, as in SecAgg+) over the round's devices in an order
drawn from a public round seed: device i is joined to the ``degree // 2`` devices on
either side of it in that order. With degree O(log n) a round costs O(n log n) key
agreements and masks instead of SecAgg's O(n^2).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def default_threshold(degree: int) -> int:
    """Shares needed to recover a self mask: a majority of the neighbours (as in SecAgg+)."""
    return degree // 2 + 1


def failure_probability(clients: int, degree: int, threshold: int, dropped: int) -> float:
    """An upper bound on the chance that a round with ``dropped`` random dropouts cannot be unmasked.

    A surviving device's self mask needs ``threshold`` surviving neighbours. Its ``degree``
    neighbours are a uniform draw from the other ``clients - 1`` devices, so the number
    of dropped ones is hypergeometric; a union bound over the survivors gives the round.
    """
    if degree >= clients or threshold > degree or dropped >= clients:
        return 1.0
    others = clients - 1
    too_many = sum(math.comb(dropped, lost) * math.comb(others - dropped, degree - lost)
                   for lost in range(max(0, degree - threshold + 1), min(dropped, degree) + 1))
    return min(1.0, (clients - dropped) * too_many / math.comb(others, degree))


def plan_degree(clients: int, dropout_fraction: float, max_failure_probability: float = 1e-6) -> int:
    """The smallest even degree, at least 2 ceil(log2 n), that survives ``dropout_fraction`` dropouts.

    With the majority threshold, a round where that fraction of devices drops fails with
    probability at most ``max_failure_probability``. For a fixed fraction the degree grows
    as O(log n), so a round costs O(n log n); small rounds get the complete graph.
    """
    if clients < 2:
        raise ValueError(f"secure aggregation needs at least 2 devices, got {clients}")
    if not 0 <= dropout_fraction < 0.5:
        raise ValueError(f"dropout_fraction must be in [0, 0.5), got {dropout_fraction}")
    dropped = math.floor(dropout_fraction * clients)
    degree = min(clients - 1, 2 * math.ceil(math.log2(clients)))
    while degree < clients - 1:
        if failure_probability(clients, degree, default_threshold(degree), dropped) <= max_failure_probability:
            return degree
        degree += 2
    return clients - 1


def neighbour_graph(nodes: Sequence[int], degree: int, round_seed: bytes) -> dict[int, tuple[int, ...]]:
    """Each node's neighbours, sorted; the graph is symmetric and every node has ``degree`` of them.

    ``degree`` is rounded up to even below n - 1 (a circulant graph's degree is even
    unless it is complete). The order comes from SHA-256 of the public seed and the
    node, so the server and every device compute the same graph.
    """
    unique = sorted(set(nodes))
    if len(unique) != len(nodes):
        raise ValueError("nodes must be distinct")
    count = len(unique)
    if degree < 1 or count < 2:
        raise ValueError(f"a graph needs at least 2 nodes and degree >= 1, got {count} nodes, degree {degree}")
    if degree >= count - 1:
        return {node: tuple(other for other in unique if other != node) for node in unique}
    order = sorted(unique, key=lambda node: hashlib.sha256(round_seed + node.to_bytes(8, "big")).digest())
    half = (degree + 1) // 2
    graph: dict[int, set[int]] = {node: set() for node in unique}
    for position, node in enumerate(order):
        for offset in range(1, half + 1):
            other = order[(position + offset) % count]
            graph[node].add(other)
            graph[other].add(node)
    return {node: tuple(sorted(neighbours)) for node, neighbours in graph.items()}
