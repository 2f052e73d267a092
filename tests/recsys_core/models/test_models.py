"""Every model honours the common interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_options import SMALL_OPTIONS

from recsys_core.data.splits import SplitConfig, split_log
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.errors import ConfigError
from recsys_core.models import MODELS, CatalogInfo, build_model
from recsys_core.training import make_optimizer, run_local_epochs, seeded

GRADIENT_MODELS = [name for name, cls in MODELS.items() if cls.trains_with_gradients]


@pytest.fixture(scope="module")
def log():
    return generate_synthetic(SyntheticConfig(n_users=60, n_items=150, seed=2))


def make(name: str, log, seed: int = 0):
    with seeded(seed):
        return build_model(name, CatalogInfo.from_log(log), SMALL_OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_per_sample_loss_is_one_dimensional(name: str, log) -> None:
    model = make(name, log)
    samples = model.training_samples(log, np.random.default_rng(0))
    batch = {key: value[:7] for key, value in samples.items()}
    loss = model.per_sample_loss(batch)
    assert loss.shape == (7,)
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_one_sample_loss_does_not_depend_on_batch_mates(name: str, log) -> None:
    # Per-sample losses must be independent; DP clipping relies on it.
    model = make(name, log).eval()
    samples = model.training_samples(log, np.random.default_rng(0))
    with torch.no_grad():
        together = model.per_sample_loss({key: value[:5] for key, value in samples.items()})
        alone = model.per_sample_loss({key: value[2:3] for key, value in samples.items()})
    assert float(alone[0]) == pytest.approx(float(together[2]), rel=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_score_covers_every_item(name: str, log) -> None:
    model = make(name, log)
    model.fit_statistics(log)
    scores = model.eval().score(np.array([0, 3, 5]), log)
    assert scores.shape == (3, log.n_items)
    assert torch.isfinite(scores).all()


def test_private_parameters_are_exactly_the_user_tables(log) -> None:
    neumf = make("neumf", log)
    assert set(neumf.private_state()) == {"gmf_user_embedding.weight", "mlp_user_embedding.weight"}
    assert not set(neumf.private_state()) & set(neumf.shared_state())
    assert "gmf_item_embedding.weight" in neumf.shared_state()
    assert make("sasrec", log).private_state() == {}


@pytest.mark.parametrize("name", list(MODELS))
def test_private_modules_are_exactly_the_user_tables(name: str, log) -> None:
    model = make(name, log)
    private = model.private_state()
    assert not set(private) & set(model.shared_state())
    assert all(value.shape[0] == log.n_users for value in private.values())
    user_tables = {f"{module_name}.weight" for module_name, module in model.named_modules()
                   if isinstance(module, torch.nn.Embedding) and module.num_embeddings == log.n_users}
    assert set(private) == user_tables


PRIVATE_MODELS = [name for name, cls in MODELS.items() if cls.private_modules]


@pytest.mark.parametrize("name", PRIVATE_MODELS)
def test_fresh_private_state_has_the_shapes_and_scale_of_the_models_own_draw(name: str) -> None:
    big = generate_synthetic(SyntheticConfig(n_users=2000, n_items=150, seed=2))
    model = make(name, big)
    fresh = model.initial_private_state(2000, torch.Generator().manual_seed(1))
    assert list(fresh) == sorted(model.private_state())
    for key, built in model.private_state().items():
        assert fresh[key].shape == built.shape and fresh[key].dtype == built.dtype
        assert float(fresh[key].std()) == pytest.approx(float(built.std()), rel=0.05), key
    again = model.initial_private_state(2000, torch.Generator().manual_seed(1))
    assert all(torch.equal(fresh[key], again[key]) for key in fresh)


def test_a_model_without_private_parameters_has_no_private_draw(log) -> None:
    model = make("sasrec", log)
    assert model.initial_private_state(5, torch.Generator()) == {}
    with pytest.raises(NotImplementedError, match="no private parameters"):
        _ = model.private_init_std


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_training_is_deterministic_under_a_seed(name: str, log) -> None:
    def trained_state() -> dict[str, torch.Tensor]:
        model = make(name, log)
        optimizer = make_optimizer(model.parameters(), "adam", 1e-2)
        with seeded(0):
            run_local_epochs(model, log, optimizer, 1, 64, np.random.default_rng(0))
        return model.state_dict()

    first, second = trained_state(), trained_state()
    assert list(first) == list(second)
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


def test_sasrec_ignores_padding_and_future_items(log) -> None:
    model = make("sasrec", log).eval()
    sequence = torch.tensor([[0, 0, 0, 0, 0, 0, 3, 7, 9, 2]])
    changed_future = sequence.clone()
    changed_future[0, -1] = 11
    states = model.encode(sequence)
    # Position 8 must not see position 9 (causal attention).
    assert torch.allclose(states[0, 8], model.encode(changed_future)[0, 8], atol=1e-6)


def test_sasrec_samples_shift_the_sequence(log) -> None:
    model = make("sasrec", log)
    samples = model.training_samples(log, np.random.default_rng(0))
    user = 0
    items = log.items_of(user) + 1
    length = min(len(items) - 1, 10)
    assert samples["positives"][user, -length:].tolist() == items[-length:].tolist()
    assert samples["sequences"][user, -length:].tolist() == items[-length - 1 : -1].tolist()


def test_same_seed_same_weights(log) -> None:
    first, second = make("neumf", log, seed=4), make("neumf", log, seed=4)
    for (name, value), other in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(value, other), name


def test_unknown_option_lists_known_ones(log) -> None:
    with pytest.raises(ConfigError, match="known: .*gmf_dim"):
        build_model("neumf", CatalogInfo.from_log(log), {"gmf_dimension": 8})
    with pytest.raises(ConfigError, match="known models"):
        build_model("matrix_magic", CatalogInfo.from_log(log))


def test_popularity_ranks_by_training_counts(log) -> None:
    split = split_log(log, SplitConfig())
    model = make("popularity", log)
    model.fit_statistics(split.train)
    scores = model.score(np.array([0]), split.train)[0].numpy()
    counts = np.bincount(split.train.item_ids, minlength=log.n_items)
    assert np.argmax(scores) == np.argmax(counts)
