"""Item-set inference: one user's positives move one way, negatives the other; noise hides both."""

from __future__ import annotations

import numpy as np

from recsys_core.audit.item_set import attack_update, item_rows

N_ITEMS, WIDTH = 200, 8


def one_users_update(positives: np.ndarray, negatives: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Rows of positives move along the user's direction, negatives against it, with jitter."""
    generator = np.random.default_rng(seed)
    user = generator.normal(size=WIDTH)
    table = np.zeros((N_ITEMS, WIDTH))
    table[positives] = user * generator.uniform(0.5, 1.5, (len(positives), 1))
    table[negatives] = -user * generator.uniform(0.1, 1.0, (len(negatives), 1))
    table[np.r_[positives, negatives]] += generator.normal(0, 0.05, (len(positives) + len(negatives), WIDTH))
    return {"gmf_item_embedding.weight": table, "mlp.0.weight": generator.normal(size=(N_ITEMS, 3)),
            "item_bias.weight": np.zeros((N_ITEMS, 1))}


def test_only_item_indexed_tables_are_read() -> None:
    update = one_users_update(np.arange(5), np.arange(5, 25), 0)
    assert item_rows(update, N_ITEMS).shape == (N_ITEMS, WIDTH + 1)  # not the equally wide mlp.0.weight


def test_a_raw_update_gives_its_users_items_away() -> None:
    generator = np.random.default_rng(1)
    items = generator.permutation(N_ITEMS)
    positives, negatives = items[:10], items[10:50]
    guess = attack_update(item_rows(one_users_update(positives, negatives, 2), N_ITEMS), positives)
    assert guess.top_k_precision == 1.0 and guess.chance_precision == 10 / N_ITEMS
    assert guess.touched_recall == 1.0 and guess.touched_precision == 10 / 50


def test_a_noisy_sum_of_many_users_gives_about_chance() -> None:
    generator = np.random.default_rng(3)
    users = [generator.permutation(N_ITEMS)[:60] for _ in range(20)]
    total = sum(item_rows(one_users_update(items[:10], items[10:], seed), N_ITEMS)
                for seed, items in enumerate(users))
    total = total + generator.normal(0, 5.0, total.shape)
    precisions = [attack_update(total, items[:10]).top_k_precision for items in users]
    # Chance is 0.05; 20 users of 10 items each.
    assert float(np.mean(precisions)) < 0.15


def test_a_count_vector_that_moves_every_row_one_way_gives_its_items_away() -> None:
    # A counting model's release (private popularity, item k-NN's first round) has no negative side:
    # the guess is its largest rows, not its smallest.
    items = np.random.default_rng(4).permutation(N_ITEMS)[:12]
    counts = np.zeros((N_ITEMS, 1))
    counts[items] = 1 / np.sqrt(len(items))
    assert attack_update(counts, items).top_k_precision == 1.0
    assert attack_update(-counts, items).top_k_precision == 1.0
