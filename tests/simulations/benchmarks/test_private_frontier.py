"""The frontier script on synthetic data: every cell measured, the noiseless cell equals the exact model."""

from __future__ import annotations

import math

import pytest

from simulations.benchmarks.private_frontier import frontier_delta, measure, table


def test_delta_is_the_largest_power_of_ten_at_most_a_tenth_of_one_over_users() -> None:
    assert frontier_delta(943) == pytest.approx(1e-4)
    assert frontier_delta(22_363) == pytest.approx(1e-6)
    assert frontier_delta(500) == pytest.approx(1e-4)


def test_every_cell_is_measured_and_more_noise_costs_utility() -> None:
    rows = measure("synthetic", None, [1.0, math.inf], draws=1, seed=0)
    cells = {(row["model"], row["epsilon"]): row for row in rows}
    assert set(cells) == {("item_knn", 1.0), ("private popularity", 1.0), ("item_knn", math.inf)}
    assert cells[("item_knn", math.inf)]["noise_multiplier"] == 0.0
    # epsilon 1 over item k-NN's six rounds at delta 1e-4 needs sigma 8.6; one round needs less.
    assert cells[("item_knn", 1.0)]["noise_multiplier"] > cells[("private popularity", 1.0)]["noise_multiplier"] > 1
    assert cells[("item_knn", math.inf)]["ndcg@10"] > cells[("item_knn", 1.0)]["ndcg@10"]
    assert all(row["popularity"] == rows[0]["popularity"] for row in rows)
    assert "| synthetic (500 users) | item_knn | inf |" in table(rows)
