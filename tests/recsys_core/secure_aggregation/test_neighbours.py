"""The sparse neighbour graph and how its degree is planned."""

from __future__ import annotations

import math

import pytest

from recsys_core.secure_aggregation.neighbours import (
    default_threshold,
    failure_probability,
    neighbour_graph,
    plan_degree,
)


def test_graph_is_symmetric_regular_and_shared_by_everyone() -> None:
    nodes = [17 * i + 3 for i in range(50)]
    graph = neighbour_graph(nodes, 12, b"round 7")
    assert graph == neighbour_graph(list(reversed(nodes)), 12, b"round 7")
    assert graph != neighbour_graph(nodes, 12, b"round 8")
    for node, neighbours in graph.items():
        assert len(neighbours) == 12 and node not in neighbours
        assert all(node in graph[other] for other in neighbours)


def test_small_rounds_get_the_complete_graph() -> None:
    graph = neighbour_graph([1, 2, 3, 4], 8, b"seed")
    assert graph[1] == (2, 3, 4)


def test_planned_degree_grows_logarithmically() -> None:
    degrees = {n: plan_degree(n, 0.1) for n in (100, 1000, 10000)}
    assert degrees[10000] < 4 * math.log2(10000) < 10000 - 1
    assert degrees[100] <= degrees[1000] <= degrees[10000]


@pytest.mark.parametrize("clients", [20, 50, 200])
@pytest.mark.parametrize("dropout", [0.1, 0.3])
def test_planned_degree_meets_its_failure_bound(clients: int, dropout: float) -> None:
    degree = plan_degree(clients, dropout)
    dropped = math.floor(dropout * clients)
    assert failure_probability(clients, degree, default_threshold(degree), dropped) <= 1e-6 or degree == clients - 1


def test_failure_probability_is_one_when_dropouts_outnumber_spare_neighbours() -> None:
    # every survivor of a 10-device complete graph keeps 4 of 9 neighbours when 5 drop; it needs 5
    assert failure_probability(10, 9, 5, 5) == 1.0
    assert failure_probability(10, 9, 5, 4) == 0.0
