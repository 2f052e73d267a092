"""IRGAN learns, keeps its generator away from real data, and trains both players in turn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_test_helpers import popularity_ndcg, synthetic_split, train

from recsys_core.data.sampling import SeenItems
from recsys_core.errors import ConfigError
from recsys_core.models import CatalogInfo, build_model
from recsys_core.training import make_optimizer, run_local_epochs, seeded


def small_model(log):
    with seeded(0):
        return build_model("irgan", CatalogInfo.from_log(log), {"embedding_dim": 8})


def test_irgan_generator_beats_popularity() -> None:
    _, result = train("irgan", synthetic_split(), epochs=10, weight_decay=1e-4)
    # Observed about 1.45x.
    assert result.test["full/ndcg@10"] > 1.2 * popularity_ndcg()


def test_players_and_private_tables() -> None:
    model = small_model(synthetic_split().train)
    assert set(model.private_state()) == {"discriminator.user_embedding.weight", "generator.user_embedding.weight"}
    assert {id(p) for p in model.per_sample_parameters()} == {id(p) for p in model.discriminator.parameters()}
    assert {id(p) for p in model.auxiliary_parameters()} == {id(p) for p in model.generator.parameters()}


def test_generator_step_trains_only_the_generator() -> None:
    log = synthetic_split().train
    model = small_model(log).train()
    with seeded(1):
        model.auxiliary_loss().backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())
    model.zero_grad(set_to_none=True)
    samples = model.training_samples(log, np.random.default_rng(0))
    model.per_sample_loss({key: value[:32] for key, value in samples.items()}).sum().backward()
    assert all(p.grad is None for p in model.generator.parameters())


def test_generated_items_follow_the_generator_and_are_unseen() -> None:
    log = synthetic_split().train
    model = small_model(log)
    favourite = 5
    with torch.no_grad():
        model.generator.item_bias.weight[favourite] = 30.0
    samples = model.training_samples(log, np.random.default_rng(0))
    generated = samples["generated"][:, 0].numpy()
    seen = SeenItems.from_logs(log)
    assert not seen.contains(log.user_ids, generated).any()
    unseen_favourite = ~seen.contains(log.user_ids, np.full(log.n_interactions, favourite))
    assert (generated[unseen_favourite] == favourite).mean() > 0.99
    again = model.training_samples(log, np.random.default_rng(0))["generated"]
    assert torch.equal(again, samples["generated"])


def test_separate_optimisers_train_both_players() -> None:
    # As a DP client runs it: a (DP) optimiser for the discriminator, a plain one for the generator.
    log = synthetic_split().train
    model = small_model(log)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    discriminator = make_optimizer(model.per_sample_parameters(), "adam", 1e-2)
    generator = make_optimizer(model.auxiliary_parameters(), "adam", 1e-2)
    with seeded(0):
        run_local_epochs(model, log.select(log.user_ids < 40), discriminator, 1, 64, np.random.default_rng(0),
                         auxiliary_optimizer=generator)
    changed = {key for key, value in model.state_dict().items() if not torch.equal(value, before[key])}
    assert {"discriminator.item_embedding.weight", "generator.item_embedding.weight"} <= changed


def test_recommend_with_picks_the_player_that_scores() -> None:
    log = synthetic_split().train
    users = np.array([0, 3])
    with seeded(0):
        generator_scored = build_model("irgan", CatalogInfo.from_log(log), {"embedding_dim": 8})
    with seeded(0):
        discriminator_scored = build_model("irgan", CatalogInfo.from_log(log),
                                           {"embedding_dim": 8, "recommend_with": "discriminator"})
    as_tensor = torch.from_numpy(users).unsqueeze(1)
    with torch.no_grad():
        assert torch.equal(generator_scored.score(users, log), generator_scored.generator.all_items(as_tensor))
        assert torch.equal(discriminator_scored.score(users, log),
                           discriminator_scored.discriminator.all_items(as_tensor))
        assert not torch.equal(discriminator_scored.score(users, log), generator_scored.score(users, log))


def test_recommend_with_rejects_an_unknown_player() -> None:
    with pytest.raises(ConfigError, match="model.recommend_with"):
        build_model("irgan", CatalogInfo(n_users=2, n_items=3), {"recommend_with": "critic"})


def test_generator_steps_follow_each_discriminator_step() -> None:
    full = synthetic_split().train
    log = full.select(full.user_ids < 40)
    with seeded(0):
        model = build_model("irgan", CatalogInfo.from_log(log), {"embedding_dim": 8, "generator_steps": 3})
    calls = []
    original = model.auxiliary_loss

    def counted() -> torch.Tensor:
        calls.append(1)
        return original()

    model.auxiliary_loss = counted
    optimizer = make_optimizer(list(model.parameters()), "sgd", 0.1)
    batch_size = 64
    with seeded(0):
        run_local_epochs(model, log, optimizer, 1, batch_size, np.random.default_rng(0))
    discriminator_steps = -(-log.n_interactions // batch_size)
    assert len(calls) == 3 * discriminator_steps
