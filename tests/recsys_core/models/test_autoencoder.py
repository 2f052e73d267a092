"""Mult-DAE and Mult-VAE learn, score from the history they are given, and anneal deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_test_helpers import popularity_ndcg, synthetic_split, train

from recsys_core.data.interactions import InteractionLog
from recsys_core.models import CatalogInfo, build_model
from recsys_core.models.autoencoder import multi_hot_histories
from recsys_core.training import make_optimizer, run_local_epochs, seeded


@pytest.mark.parametrize("name", ["mult_dae", "mult_vae"])
def test_autoencoders_beat_popularity(name: str) -> None:
    options = {"hidden_dims": [64], **({"total_anneal_steps": 50} if name == "mult_vae" else {})}
    model, result = train(name, synthetic_split(), options, epochs=30, patience=0, eval_every=10)
    # Observed about 1.4x; the margin absorbs platform noise, not a weaker model.
    assert result.test["full/ndcg@10"] > 1.2 * popularity_ndcg()
    assert model.private_state() == {}


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


def test_vae_kl_weight_follows_the_training_batches() -> None:
    log = synthetic_split().train
    with seeded(0):
        model = build_model("mult_vae", CatalogInfo.from_log(log),
                            {"hidden_dims": [16], "total_anneal_steps": 10, "anneal_cap": 0.2})
    assert model.kl_weight() == 0.0
    optimizer = make_optimizer(model.parameters(), "adam", 1e-3)
    with seeded(0):
        run_local_epochs(model, log, optimizer, 1, 200, np.random.default_rng(0))
    batches = int(np.ceil(len(np.unique(log.user_ids)) / 200))
    assert float(model.anneal_step) == batches
    assert model.kl_weight() == pytest.approx(min(0.2, batches / 10))
    # Evaluation does not move the schedule.
    samples = model.training_samples(log, np.random.default_rng(0))
    with torch.no_grad():
        model.per_sample_loss({key: value[:4] for key, value in samples.items()})
    model.eval().per_sample_loss({key: value[:4] for key, value in samples.items()})
    assert float(model.anneal_step) == batches
    # The step count is shared state: a fresh model that loads it resumes the schedule.
    assert "anneal_step" in model.shared_state()
    with seeded(1):
        fresh = build_model("mult_vae", CatalogInfo.from_log(log),
                            {"hidden_dims": [16], "total_anneal_steps": 10, "anneal_cap": 0.2})
    fresh.load_state_dict(model.state_dict())
    assert fresh.kl_weight() == model.kl_weight()


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
