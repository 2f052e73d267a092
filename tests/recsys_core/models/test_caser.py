"""Caser learns taste and order, builds its windows correctly, and keeps only the user table private."""

from __future__ import annotations

import numpy as np
from model_test_helpers import popularity_ndcg, synthetic_split, train, walk_split

from recsys_core.data.sampling import SeenItems
from recsys_core.models import CatalogInfo, build_model
from recsys_core.training import seeded

SMALL = {"embedding_dim": 16, "max_length": 5, "targets": 2}


def test_caser_beats_popularity() -> None:
    model, result = train("caser", synthetic_split(), SMALL, epochs=4, batch_size=256)
    # Observed about 1.3x.
    assert result.test["full/ndcg@10"] > 1.15 * popularity_ndcg()
    assert set(model.private_state()) == {"user_embedding.weight"}


def test_caser_learns_a_sequential_pattern() -> None:
    _, result = train("caser", walk_split(), SMALL, epochs=10, patience=0, eval_every=10)
    assert result.test["full/hr@10"] > 0.9


def test_windows_hold_the_previous_items_and_the_next_targets() -> None:
    log = synthetic_split().train
    with seeded(0):
        model = build_model("caser", CatalogInfo.from_log(log), {**SMALL, "negatives_per_target": 3})
    samples = model.training_samples(log, np.random.default_rng(0))
    user = 0
    items = log.items_of(user)
    rows = np.flatnonzero(samples["users"][:, 0].numpy() == user)
    assert len(rows) == len(items) - 1  # every position after the first starts a window
    first, last = rows[0], rows[-1]
    # The first window sees one item, left-padded; its targets are the next two.
    assert samples["sequences"][first].tolist() == [0, 0, 0, 0, items[0] + 1]
    assert samples["targets"][first].tolist() == items[1:3].tolist()
    # The last window predicts the last item; its second target is past the end and masked.
    assert samples["sequences"][last].tolist() == (items[-6:-1] + 1).tolist()
    assert samples["targets"][last, 0] == items[-1]
    assert samples["target_mask"][last].tolist() == [1.0, 0.0]
    assert samples["negatives"].shape == (len(samples["users"]), 6)
    seen = SeenItems.from_logs(log)
    assert not seen.contains(samples["users"].numpy(), samples["negatives"].numpy()).any()
    for key in ("users", "sequences", "targets", "negatives"):
        assert samples[key].is_contiguous() and samples[key].dim() == 2
