"""GRU4Rec learns taste and order, works after Opacus swaps in DPGRU, and never trains its padding row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_test_helpers import popularity_ndcg, synthetic_split, train, walk_split
from opacus.grad_sample import GradSampleModule
from opacus.layers import DPGRU
from opacus.validators import ModuleValidator

from recsys_core.data.sequences import PADDING_ITEM
from recsys_core.models import CatalogInfo, build_model
from recsys_core.training import make_optimizer, run_local_epochs, seeded

# Opacus's hooks on embeddings (whose integer inputs need no gradient) make torch warn on every backward.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

SMALL = {"embedding_dim": 32, "hidden_dim": 32, "max_length": 20}


def test_gru4rec_beats_popularity() -> None:
    model, result = train("gru4rec", synthetic_split(), SMALL, epochs=40, patience=0, eval_every=10,
                          learning_rate=1e-2)
    # Observed about 1.3x.
    assert result.test["full/ndcg@10"] > 1.15 * popularity_ndcg()
    assert model.private_state() == {}


def test_gru4rec_learns_a_sequential_pattern() -> None:
    _, result = train("gru4rec", walk_split(), SMALL, epochs=20, patience=0, eval_every=10, learning_rate=1e-2)
    assert result.test["full/hr@10"] > 0.9


def small_model(log):
    with seeded(0):
        return build_model("gru4rec", CatalogInfo.from_log(log), {"embedding_dim": 8, "hidden_dim": 8, "max_length": 6})


def test_fixed_model_is_the_same_model_and_still_trains() -> None:
    log = synthetic_split().train
    model = small_model(log)
    fixed = ModuleValidator.fix(model)
    assert isinstance(fixed.gru, DPGRU) and ModuleValidator.is_valid(fixed)
    # Same tensors under the same names in the same order: a fixed client and an unfixed
    # server exchange weights as they are, by name or by position.
    assert list(fixed.state_dict()) == list(model.state_dict())
    fixed.load_state_dict(model.state_dict())
    users = np.arange(5)
    with torch.no_grad():
        assert torch.allclose(fixed.eval().score(users, log), model.eval().score(users, log), atol=1e-5)
    optimizer = make_optimizer(fixed.parameters(), "adam", 1e-2)
    with seeded(0):
        losses = run_local_epochs(fixed, log, optimizer, 3, 128, np.random.default_rng(0))
    assert losses[-1] < losses[0]
    model.load_state_dict(fixed.state_dict())
    with torch.no_grad():
        assert torch.allclose(fixed.eval().score(users, log), model.eval().score(users, log), atol=1e-5)


def test_padding_row_gets_no_gradient_even_under_opacus_hooks() -> None:
    log = synthetic_split().train
    model = ModuleValidator.fix(small_model(log)).train()
    samples = model.training_samples(log, np.random.default_rng(0))
    batch = {key: value[:16] for key, value in samples.items()}
    assert (batch["sequences"] == PADDING_ITEM).any()
    GradSampleModule(model)
    model.per_sample_loss(batch).mean().backward()
    assert not model.item_embedding.weight.grad_sample[:, PADDING_ITEM].any()
    assert not model.item_embedding.weight.grad[PADDING_ITEM].any()
    assert model.item_embedding.weight.grad_sample[:, 1:].any()
