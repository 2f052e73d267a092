"""NeuMF: single pairs for plain training, one group per interaction for DP-SGD, and catalogue scoring."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from model_test_helpers import synthetic_split
from torch.nn import functional

from recsys_core.models import CatalogInfo, build_model
from recsys_core.training import seeded


def test_dp_samples_hold_each_interaction_with_its_negatives_and_flatten_to_the_plain_pairs() -> None:
    log = synthetic_split().train
    with seeded(0):
        model = build_model("neumf", CatalogInfo.from_log(log), {"negatives_per_positive": 3})
    grouped = model.private_training_samples(log, np.random.default_rng(4))
    pairs = model.training_samples(log, np.random.default_rng(4))
    # One DP sample per interaction: removing an interaction removes exactly one sample.
    assert grouped["items"].shape == (log.n_interactions, 4) and grouped["users"].shape == (log.n_interactions, 1)
    assert torch.equal(grouped["items"][:, 0], torch.from_numpy(np.asarray(log.item_ids)))
    assert torch.equal(grouped["labels"][:, 0], torch.ones(log.n_interactions))
    assert pairs["items"].shape == (4 * log.n_interactions, 1)
    assert torch.equal(pairs["items"].reshape(-1, 4), grouped["items"])
    # A group's loss is the sum of its pairs' losses.
    group_losses = model.per_sample_loss(grouped)
    pair_losses = model.per_sample_loss(pairs)
    assert group_losses.shape == (log.n_interactions,) and pair_losses.shape == (4 * log.n_interactions,)
    torch.testing.assert_close(group_losses, pair_losses.reshape(-1, 4).sum(dim=1))


@pytest.mark.parametrize("layers", [(64, 32, 16), (16, 8), (8,)])
def test_scoring_the_catalogue_equals_the_forward_pass_on_every_pair(layers: tuple[int, ...]) -> None:
    model = build_model("neumf", CatalogInfo(5, 40), {"mlp_layers": list(layers), "score_chunk_pairs": 80})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.5)
        model.eval()
        users = np.array([4, 0, 2])
        pairs = model(torch.from_numpy(users).repeat_interleave(40).unsqueeze(1), torch.arange(40).repeat(3)[:, None])
        assert torch.allclose(model.score(users, None), pairs.view(3, 40), rtol=1e-5, atol=1e-5)


def test_cached_item_projections_follow_every_change_of_the_weights() -> None:
    model = build_model("neumf", CatalogInfo(2, 30), {})
    model.eval()
    users = np.array([0, 1])
    with torch.no_grad():
        model.score(users, None)  # fills the cache
        model.mlp_item_embedding.weight.add_(0.3)  # as an optimiser step would
        model.mlp[0].weight.mul_(1.5)
        assert torch.allclose(model.score(users, None), model._score_pairs(users), rtol=1e-5, atol=1e-6)


def test_a_weighted_log_weighs_each_positive_term_and_leaves_the_negatives_at_one() -> None:
    log = synthetic_split().train
    weights = np.random.default_rng(1).uniform(0.5, 7.0, log.n_interactions).astype(np.float32)
    weighted_log = replace(log, weights=weights)
    with seeded(0):
        model = build_model("neumf", CatalogInfo.from_log(log), {"negatives_per_positive": 3})
    plain = model.private_training_samples(log, np.random.default_rng(4))
    weighted = model.private_training_samples(weighted_log, np.random.default_rng(4))
    assert "weights" not in plain and torch.equal(weighted["items"], plain["items"])
    with torch.no_grad():
        terms = functional.binary_cross_entropy_with_logits(model(plain["users"], plain["items"]), plain["labels"],
                                                            reduction="none")
        expected = terms[:, 0] * torch.from_numpy(weights) + terms[:, 1:].sum(dim=1)
        torch.testing.assert_close(model.per_sample_loss(weighted), expected)
        # The flat pairs of plain training carry the same weights.
        pairs = model.training_samples(weighted_log, np.random.default_rng(4))
        torch.testing.assert_close(model.per_sample_loss(pairs).reshape(-1, 4).sum(dim=1), expected)
