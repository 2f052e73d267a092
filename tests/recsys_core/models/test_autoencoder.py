"""Both autoencoders score from the history they are given, reading only the items in it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from model_test_helpers import synthetic_split

from recsys_core.data.interactions import InteractionLog
from recsys_core.models import CatalogInfo, build_model
from recsys_core.models.autoencoder import history_vectors, multi_hot_histories
from recsys_core.training import seeded


@pytest.mark.parametrize("name", ["mult_dae", "mult_vae"])
def test_score_encodes_the_history_not_the_user_id(name: str) -> None:
    train_log = synthetic_split().train
    with seeded(0):
        model = build_model(name, CatalogInfo.from_log(train_log), {"hidden_dims": [16]}).eval()

    def history(rows: list[tuple[int, int]]) -> InteractionLog:
        users, items = np.array(rows).T
        return InteractionLog.from_arrays(users, items, np.arange(len(rows)), None,
                                          train_log.user_map, train_log.item_map)

    same = model.score(np.array([0, 1]), history([(0, 3), (0, 7), (1, 3), (1, 7)]))
    assert torch.equal(same[0], same[1])
    different = model.score(np.array([0, 1]), history([(0, 3), (0, 7), (1, 4), (1, 9)]))
    assert not torch.allclose(different[0], different[1])


@pytest.mark.parametrize("name", ["mult_dae", "mult_vae"])
@pytest.mark.parametrize("hidden_dims", [[16], [24, 8]])
def test_ranking_reads_only_the_seen_items_and_equals_the_dense_encoder(name: str, hidden_dims: list[int]) -> None:
    train_log = synthetic_split().train
    with seeded(0):
        model = build_model(name, CatalogInfo.from_log(train_log), {"hidden_dims": hidden_dims}).eval()
    # User 1 has a repeated item (counted once, as in the multi-hot vector); user 2 has no history.
    users, items = np.array([0, 0, 0, 1, 1, 1]), np.array([3, 7, 11, 5, 5, 2])
    history = InteractionLog.from_arrays(users, items, np.arange(6), None, train_log.user_map, train_log.item_map)
    requested = np.array([1, 0, 2])
    with torch.no_grad():
        sparse = model.score(requested, history)
        dense = model.logits(torch.from_numpy(multi_hot_histories(history, requested)).to(torch.float32))
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mult_dae", "mult_vae"])
def test_a_weighted_history_is_the_summed_weights_and_ranking_still_equals_the_dense_encoder(name: str) -> None:
    train_log = synthetic_split().train
    with seeded(0):
        model = build_model(name, CatalogInfo.from_log(train_log), {"hidden_dims": [16]}).eval()
    users, items = np.array([0, 0, 0, 1, 1, 1]), np.array([3, 7, 11, 5, 5, 2])
    history = InteractionLog.from_arrays(users, items, np.arange(6), None, train_log.user_map, train_log.item_map,
                                         weights=np.array([1.0, 4.0, 2.0, 1.5, 2.5, 1.0]))
    vectors = history_vectors(history, np.array([1, 0]))
    assert vectors.dtype == np.float32
    assert vectors[0, 5] == 4.0 and vectors[0, 2] == 1.0 and vectors[1, 7] == 4.0 and vectors.sum() == 12.0
    requested = np.array([1, 0, 2])
    with torch.no_grad():
        sparse = model.score(requested, history)
        dense = model.logits(torch.from_numpy(history_vectors(history, requested)))
        unweighted = model.score(requested, replace(history, weights=None))
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sparse[:2], unweighted[:2])
    # The likelihood weighs each item's log-probability by its weight.
    samples = model.training_samples(history, np.random.default_rng(0))
    assert torch.equal(samples["histories"], torch.from_numpy(history_vectors(history, np.array([0, 1]))))
