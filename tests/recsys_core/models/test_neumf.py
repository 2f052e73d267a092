"""NeuMF's samples: single pairs for plain training, one group per interaction for DP-SGD."""

from __future__ import annotations

import numpy as np
import torch
from model_test_helpers import synthetic_split

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
