"""The content model learns from item features, ranks items nobody has interacted with, and needs features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_test_helpers import grow_catalogue, hide_items, new_item_auc, popularity_ndcg, synthetic_split, train

from recsys_core.errors import ConfigError
from recsys_core.models import CatalogInfo, build_model
from recsys_core.models.content import preceding_profiles
from recsys_core.training import make_optimizer, run_local_epochs, seeded


def test_content_beats_popularity() -> None:
    model, result = train("content", synthetic_split(), epochs=10)
    # Observed about 1.2x. Popularity is independent of the features in the synthetic data, so a content
    # model only wins through taste (genres): it cannot know which items are popular.
    assert result.test["full/ndcg@10"] > 1.1 * popularity_ndcg()
    assert model.private_state() == {} and set(model.state_dict()) == set(dict(model.named_parameters()))


def test_new_items_are_ranked_by_their_features() -> None:
    split = synthetic_split()
    warm_log, warm, new = hide_items(split)
    with seeded(0):
        trained = build_model("content", CatalogInfo.from_log(warm_log))
        run_local_epochs(trained, warm_log, make_optimizer(trained.parameters(), "adam", 3e-3), 10, 128,
                         np.random.default_rng(0))
        model = build_model("content", CatalogInfo.from_log(split.train))
    grow_catalogue(trained, model, warm)
    history = split.train.select(np.isin(split.train.item_ids, warm))
    users = np.unique(split.train.user_ids[np.isin(split.train.item_ids, new)])
    with torch.no_grad():
        scores = model.eval().score(users, history)[:, new]
    assert (scores.std(dim=1) > 0.1).all()
    # Random is 0.5; the genre cosine between profile and item scores about 0.7 here; observed about 0.7.
    assert new_item_auc(scores.numpy(), users, new, split) > 0.6


def test_items_with_the_same_features_score_the_same() -> None:
    log = synthetic_split().train
    assert log.item_features is not None
    features = log.item_features.values.copy()
    features[1] = features[0]
    with seeded(0):
        model = build_model("content", CatalogInfo(log.n_users, log.n_items, features)).eval()
    with torch.no_grad():
        scores = model.score(np.arange(10), log)
    assert torch.equal(scores[:, 0], scores[:, 1])
    assert not torch.equal(scores[:, 0], scores[:, 2])


def test_a_sample_profile_is_built_from_the_items_before_it() -> None:
    log = synthetic_split().train
    assert log.item_features is not None
    features = log.item_features.values
    rows, profiles = preceding_profiles(log, features, length=3)
    user_rows = np.arange(log.user_offsets[0], log.user_offsets[1])
    assert user_rows[0] not in rows  # the first interaction has no history to build a profile from
    for row in user_rows[1:6]:
        earlier = log.item_ids[max(user_rows[0], row - 3) : row]
        np.testing.assert_allclose(profiles[np.searchsorted(rows, row)], features[earlier].mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize("name", ["content", "hybrid"])
def test_a_dataset_without_item_features_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"model '{name}' needs item features"):
        build_model(name, CatalogInfo(n_users=5, n_items=10, item_features=None))


def test_the_popularity_feature_tells_apart_items_with_the_same_features() -> None:
    log = synthetic_split().train
    assert log.item_features is not None
    features = log.item_features.values.copy()
    features[1] = features[0]
    popularity = np.zeros(log.n_items)
    popularity[0] = 50.0
    with seeded(0):
        model = build_model("content", CatalogInfo(log.n_users, log.n_items, features, popularity),
                            {"popularity_feature": True}).eval()
    assert model.item_features.shape[1] == features.shape[1] + 1
    assert model.item_features[0, -1] == 1.0 and model.item_features[1, -1] == 0.0  # scaled by the most popular
    with torch.no_grad():
        scores = model.score(np.arange(10), log)
    assert not torch.equal(scores[:, 0], scores[:, 1])


def test_the_popularity_feature_adds_what_features_cannot_know() -> None:
    split = synthetic_split()
    _, plain = train("content", split, epochs=10)
    _, with_popularity = train("content", split, {"popularity_feature": True}, epochs=10)
    # Popularity is independent of the features in the synthetic data, so only the count input can carry it.
    # Observed 0.227 without and 0.249 with (popularity itself: 0.184); on ML-100K 0.030 and 0.050.
    assert with_popularity.test["full/ndcg@10"] > 1.05 * plain.test["full/ndcg@10"]


def test_a_device_ranks_with_the_counts_that_came_with_the_global_model() -> None:
    log = synthetic_split().train
    assert log.item_features is not None
    features = log.item_features.values
    server_counts, device_counts = np.arange(log.n_items, dtype=np.float64), np.ones(log.n_items)
    with seeded(0):
        server = build_model("content", CatalogInfo(log.n_users, log.n_items, features, server_counts),
                             {"popularity_feature": True})
        # A device's own catalogue counts only its own rows: it must not rank with those.
        device = build_model("content", CatalogInfo(1, log.n_items, features, device_counts),
                             {"popularity_feature": True})
    assert "item_log_popularity" in server.shared_state()
    device.load_state_dict(server.shared_state())
    np.testing.assert_allclose(device.item_features[:, -1].numpy(), server.item_features[:, -1].numpy())
    with torch.no_grad():
        assert torch.equal(device.eval().score(np.arange(3), log), server.eval().score(np.arange(3), log))


def test_the_popularity_feature_needs_the_catalogue_counts() -> None:
    log = synthetic_split().train
    assert log.item_features is not None
    with pytest.raises(ConfigError, match="needs the catalogue's per-item training counts"):
        build_model("content", CatalogInfo(log.n_users, log.n_items, log.item_features.values),
                    {"popularity_feature": True})


def test_the_catalogue_counts_training_rows_per_item() -> None:
    log = synthetic_split().train
    counts = CatalogInfo.from_log(log).item_popularity
    assert counts is not None and counts.sum() == log.n_interactions
    np.testing.assert_array_equal(counts, np.bincount(log.item_ids, minlength=log.n_items))
