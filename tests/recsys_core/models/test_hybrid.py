"""The hybrid learns, scores never-trained items through their content, and scores users from their profile."""

from __future__ import annotations

import numpy as np
import torch
from model_test_helpers import grow_catalogue, hide_items, new_item_auc, popularity_ndcg, synthetic_split, train

from recsys_core.data.interactions import InteractionLog
from recsys_core.models import CatalogInfo, build_model
from recsys_core.training import make_optimizer, run_local_epochs, seeded


def test_hybrid_beats_popularity() -> None:
    model, result = train("hybrid", synthetic_split(), epochs=6)
    # Observed about 1.5x.
    assert result.test["full/ndcg@10"] > 1.25 * popularity_ndcg()
    assert set(model.private_state()) == {"user_embedding.weight"}


def test_never_trained_items_are_scored_by_the_content_tower() -> None:
    split = synthetic_split()
    warm_log, warm, new = hide_items(split)
    with seeded(0):
        trained = build_model("hybrid", CatalogInfo.from_log(warm_log))
        run_local_epochs(trained, warm_log, make_optimizer(trained.parameters(), "adam", 3e-3), 5, 128,
                         np.random.default_rng(0))
        model = build_model("hybrid", CatalogInfo.from_log(split.train))
    initial = model.item_embedding.weight[new].detach().clone()
    grow_catalogue(trained, model, warm)
    # The new items' learned parts are exactly their (near-zero) initial values ...
    assert torch.equal(model.item_embedding.weight[new], initial)
    assert not model.item_bias.weight[new].any()
    history = split.train.select(np.isin(split.train.item_ids, warm))
    users = np.unique(split.train.user_ids[np.isin(split.train.item_ids, new)])
    with torch.no_grad():
        scores = model.eval().score(users, history)[:, new]
    # ... yet they get distinct scores that follow the users' tastes (random is 0.5; observed about 0.67).
    assert (scores.std(dim=1) > 0.1).all()
    assert new_item_auc(scores.numpy(), users, new, split) > 0.6


def test_a_user_with_little_history_is_scored_from_that_history() -> None:
    log = synthetic_split().train
    with seeded(0):
        model = build_model("hybrid", CatalogInfo.from_log(log)).eval()

    def two_items(first: int, second: int) -> InteractionLog:
        return InteractionLog.from_arrays(np.array([0, 0]), np.array([first, second]), np.array([0, 1]), None,
                                          log.user_map, log.item_map, item_features=log.item_features)

    with torch.no_grad():
        same = model.score(np.array([0]), two_items(3, 7))
        assert torch.equal(same, model.score(np.array([0]), two_items(3, 7)))
        assert not torch.allclose(same, model.score(np.array([0]), two_items(4, 9)))


def test_the_cached_catalogue_follows_every_change_of_the_item_side() -> None:
    log = synthetic_split().train
    with seeded(0):
        model = build_model("hybrid", CatalogInfo.from_log(log)).eval()
    users = np.array([0, 1])
    with torch.no_grad():
        model.score(users, log)  # fills the cache
        model.item_bias.weight.add_(0.5)  # as an optimiser step would
        model.content_tower[0].weight.mul_(1.5)
        cached = model.score(users, log)
    uncached = model.score(users, log)  # with gradients on, nothing is cached
    torch.testing.assert_close(cached, uncached.detach())
    with torch.no_grad():
        model.load_state_dict({name: value * 0.5 for name, value in model.state_dict().items()})
        after_load = model.score(users, log)
    torch.testing.assert_close(after_load, model.score(users, log).detach())
