"""Local (interaction-level) DP-SGD on a device: accounting across rounds, budget, clipping, 1-D losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_options import SMALL_OPTIONS
from opacus.accountants import RDPAccountant

from recsys_core.errors import ConfigError
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device import train_on_device
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.state import ACCOUNTANT_KEY, DeviceState, state_to_arrays
from recsys_core.models import MODELS, CatalogInfo, build_model
from recsys_core.privacy import local_dp
from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.privacy.local_dp import PoissonSchedule, PrivateEngine, check_per_sample_loss, private_engine
from recsys_core.training import seeded

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

GRADIENT_MODELS = sorted(name for name, cls in MODELS.items() if cls.trains_with_gradients)
PARTITION = 3
SIGMA, BATCH, EPOCHS, DELTA = 1.1, 8, 1, 1e-5


def config(model: str = "neumf", **privacy) -> FederatedConfig:
    local = {"enabled": True, "noise_multiplier": SIGMA, "target_epsilon": 100.0, "target_delta": DELTA, **privacy}
    return FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": 40, "n_items": 80, "seed": 1}},
        "model": {"name": model, "options": SMALL_OPTIONS.get(model, {})},
        "local": {"epochs": EPOCHS, "batch_size": BATCH, "learning_rate": 0.05},
        "privacy": {"local": local},
    }).validate()


def global_shared(cfg: FederatedConfig) -> dict[str, np.ndarray]:
    data = load_federated_data(cfg.data, cfg.partition)
    return state_to_arrays(build_device_model(cfg, data.catalog, 1, 0).shared_state())


def device_round(cfg: FederatedConfig, shared, state, server_round: int):
    data = load_federated_data(cfg.data, cfg.partition)
    return train_on_device(cfg, data.device_split(PARTITION), shared, state, server_round, PARTITION)


def round_schedule(cfg: FederatedConfig) -> PoissonSchedule:
    data = load_federated_data(cfg.data, cfg.partition)
    split = data.device_split(PARTITION)
    model = build_device_model(cfg, CatalogInfo.from_log(split.train), 1, PARTITION)
    samples = model.private_training_samples(split.train, np.random.default_rng(0))
    return PoissonSchedule(local_dp.samples_count(samples), cfg.local.batch_size)


def test_a_dp_round_changes_the_shared_parameters_and_reports_a_growing_epsilon() -> None:
    cfg = config()
    shared = global_shared(cfg)
    first = device_round(cfg, shared, None, 1)
    assert not first.declined and first.num_examples > 0
    assert any(not np.array_equal(shared[name], first.shared_parameters[name]) for name in shared)
    assert set(first.shared_parameters) == set(shared)
    assert first.privacy_epsilon is not None and first.privacy_epsilon > 0
    # The exact local loss would leak past the guarantee: it is not reported.
    assert np.isnan(first.train_loss)
    second = device_round(cfg, first.shared_parameters, first.device_state, 2)
    assert second.privacy_epsilon is not None and second.privacy_epsilon > first.privacy_epsilon
    # The private parameters and their optimiser state carry over, as without DP.
    assert second.device_state.optimizer_state
    before = first.device_state.private_parameters["gmf_user_embedding.weight"]
    assert not np.array_equal(before, second.device_state.private_parameters["gmf_user_embedding.weight"])


def test_accountant_survives_rounds_and_a_restart_and_equals_one_accountant_over_all_steps() -> None:
    cfg = config()
    schedule = round_schedule(cfg)
    shared = global_shared(cfg)
    first = device_round(cfg, shared, None, 3)
    # A restart: the state goes through flat arrays (a file or Context.state) and the
    # process loses its cached Opacus wrappers.
    restored = DeviceState.from_arrays(first.device_state.to_arrays())
    local_dp._ENGINES.clear()
    later = device_round(cfg, first.shared_parameters, restored, 6)
    steps = schedule.steps(EPOCHS)
    one = PrivacyAccountant("rdp")
    one.record(SIGMA, schedule.sampling_rate, 2 * steps)
    assert later.privacy_epsilon == one.epsilon(DELTA)
    assert PrivacyAccountant.from_dict(later.device_state.privacy_accountant or {}).total_steps == 2 * steps
    # And Opacus's own accountant, stepped once per DP-SGD step, agrees.
    opacus = RDPAccountant()
    for _ in range(2 * steps):
        opacus.step(noise_multiplier=SIGMA, sample_rate=schedule.sampling_rate)
    assert later.privacy_epsilon == pytest.approx(opacus.get_epsilon(DELTA), rel=1e-12)


def test_an_exhausted_budget_makes_the_device_decline_with_a_normal_outcome() -> None:
    schedule = round_schedule(config())
    one_round = PrivacyAccountant("rdp")
    one_round.record(SIGMA, schedule.sampling_rate, schedule.steps(EPOCHS))
    # Room for exactly one round, not two.
    cfg = config(target_epsilon=one_round.epsilon(DELTA) * 1.01)
    shared = global_shared(cfg)
    trained = device_round(cfg, shared, None, 1)
    assert not trained.declined
    declined = device_round(cfg, trained.shared_parameters, trained.device_state, 2)
    assert declined.declined and "privacy budget" in declined.decline_reason
    assert declined.num_examples == 0
    for name, value in trained.shared_parameters.items():
        np.testing.assert_array_equal(declined.shared_parameters[name], value)
    assert declined.privacy_epsilon == trained.privacy_epsilon
    assert declined.device_state.privacy_accountant == trained.device_state.privacy_accountant
    for name, value in trained.device_state.private_parameters.items():
        np.testing.assert_array_equal(declined.device_state.private_parameters[name], value)


def test_a_budget_too_small_for_one_round_declines_the_first_round() -> None:
    cfg = config(target_epsilon=0.01)
    outcome = device_round(cfg, global_shared(cfg), None, 1)
    assert outcome.declined and outcome.num_examples == 0 and outcome.privacy_epsilon == 0.0
    assert PrivacyAccountant.from_dict(outcome.device_state.privacy_accountant or {}).total_steps == 0


@pytest.mark.parametrize("name", ["neumf", "sasrec"])
def test_each_sample_gradient_is_clipped_to_the_clip_norm(name: str) -> None:
    """With noise off and plain SGD at learning rate 1, a one-sample step moves the
    per-sample parameters by exactly that sample's clipped gradient."""
    clip = 1e-3
    cfg = config(name)
    data = load_federated_data(cfg.data, cfg.partition)
    log = data.split.train
    with seeded(0):
        model = build_model(name, CatalogInfo.from_log(log), SMALL_OPTIONS[name])
    engine = PrivateEngine(model)
    assert engine.mode == ("hooks" if name == "sasrec" else "ghost")
    samples = engine.model.training_samples(log, np.random.default_rng(0))
    norms = []
    for index in range(6):
        engine.load(model)
        parameters = engine.model.per_sample_parameters()
        before = [parameter.detach().clone() for parameter in parameters]
        optimizer = engine.optimizer(torch.optim.SGD(parameters, lr=1.0), noise_multiplier=0.0, clip_norm=clip,
                                     schedule=PoissonSchedule(1, 1), noise_generator=np.random.default_rng(0))
        engine.step(optimizer, {key: value[index : index + 1] for key, value in samples.items()})
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(parameters, before)])
        norms.append(float(moved.norm()))
    assert max(norms) <= clip * (1 + 1e-4)
    # The raw gradients are far larger than the bound, so every sample was clipped to it.
    assert min(norms) == pytest.approx(clip, rel=1e-3)


def test_empty_poisson_batches_take_a_noise_only_step() -> None:
    cfg = config()
    data = load_federated_data(cfg.data, cfg.partition)
    split = data.device_split(PARTITION)
    model = build_device_model(cfg, CatalogInfo.from_log(split.train), 1, PARTITION)
    engine = private_engine(model)
    samples = engine.model.training_samples(split.train, np.random.default_rng(0))
    schedule = PoissonSchedule(local_dp.samples_count(samples), 1)
    draws = np.random.default_rng(11).random((schedule.steps_per_epoch, schedule.num_samples))
    assert ((draws < schedule.sampling_rate).sum(axis=1) == 0).any(), "the seed must give an empty batch"
    parameters = engine.model.per_sample_parameters()
    optimizer = engine.optimizer(torch.optim.SGD(parameters, lr=0.1), noise_multiplier=1.0, clip_norm=1.0,
                                 schedule=schedule, noise_generator=np.random.default_rng(0))
    losses = local_dp.run_private_epochs(engine, split.train, optimizer, [], 1, schedule,
                                         np.random.default_rng(0), np.random.default_rng(11),
                                         np.random.default_rng(0), samples)
    assert np.isfinite(losses).all()
    # Directly: an empty batch's step is pure noise of the declared scale.
    before = [parameter.detach().clone() for parameter in parameters]
    PrivateEngine.noise_only_step(optimizer, np.random.default_rng(1))
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(parameters, before)])
    assert moved.abs().max() > 0
    expected_std = 0.1 * 1.0 * 1.0 / schedule.expected_batch_size
    assert float(moved.std()) == pytest.approx(expected_std, rel=0.05)


def test_the_opacus_wrappers_are_reused_with_the_new_weights() -> None:
    cfg = config()
    data = load_federated_data(cfg.data, cfg.partition)
    first = build_device_model(cfg, data.catalog, 1, 0)
    second = build_device_model(cfg, data.catalog, 1, 1)
    engine = private_engine(first)
    assert private_engine(second) is engine
    for name, value in second.state_dict().items():
        torch.testing.assert_close(engine.model.state_dict()[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_per_sample_losses_are_one_dimensional(name: str) -> None:
    cfg = config(name)
    data = load_federated_data(cfg.data, cfg.partition)
    with seeded(0):
        model = build_model(name, CatalogInfo.from_log(data.split.train), SMALL_OPTIONS.get(name, {}))
    samples = model.training_samples(data.split.train, np.random.default_rng(0))
    batch = {key: value[:5] for key, value in samples.items()}
    losses = model.per_sample_loss(batch)
    assert losses.shape == (5,)
    check_per_sample_loss(losses, 5)


def test_a_column_of_losses_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"shape \[4\], got \[4, 1\]"):
        check_per_sample_loss(torch.zeros(4, 1), 4)


def test_local_dp_for_a_model_without_gradients_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="privacy.local: model 'popularity' is fitted by counting"):
        config("popularity")
    unchecked = FederatedConfig.from_dict({"model": {"name": "popularity"}, "privacy": {"local": {"enabled": True}},
                                           "data": {"synthetic": {"n_users": 40, "n_items": 80, "seed": 1}}})
    data = load_federated_data(unchecked.data, unchecked.partition)
    with pytest.raises(ConfigError, match="fitted by counting"):
        train_on_device(unchecked, data.device_split(0), {}, None, 1, 0)


def test_delta_must_be_below_one_over_the_local_examples() -> None:
    with pytest.raises(ConfigError, match="privacy.local.target_delta"):
        config(target_delta=0.2).validate(min_local_examples=10)
    with pytest.raises(ConfigError, match="privacy.local.noise_multiplier"):
        config(noise_multiplier=0.0)
    # On the device, against its own sample count.
    cfg = config(target_delta=0.9 / round_schedule(config()).num_samples * 2)
    with pytest.raises(ConfigError, match="fewest training examples"):
        device_round(cfg, global_shared(cfg), None, 1)


def test_privacy_off_changes_nothing_in_the_device_outcome() -> None:
    """A disabled [privacy] section, whatever its values, trains exactly as no section does.

    (Checked once against the code before local DP existed: every model's shared and
    private arrays and losses were bit-identical.)"""
    plain = FederatedConfig.from_dict({"data": {"synthetic": {"n_users": 40, "n_items": 80, "seed": 1}},
                                       "model": {"name": "neumf", "options": SMALL_OPTIONS["neumf"]}}).validate()
    disabled = FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": 40, "n_items": 80, "seed": 1}},
        "model": {"name": "neumf", "options": SMALL_OPTIONS["neumf"]},
        "privacy": {"local": {"enabled": False, "noise_multiplier": 5.0, "target_epsilon": 0.1}},
    }).validate()
    shared = global_shared(plain)
    expected, actual = device_round(plain, shared, None, 1), device_round(disabled, shared, None, 1)
    for name, value in expected.shared_parameters.items():
        np.testing.assert_array_equal(actual.shared_parameters[name], value)
    for name, value in expected.device_state.to_arrays().items():
        np.testing.assert_array_equal(actual.device_state.to_arrays()[name], value)
    assert actual.train_loss == expected.train_loss and not np.isnan(actual.train_loss)
    assert not actual.declined and actual.privacy_epsilon is None
    assert ACCOUNTANT_KEY not in actual.device_state.to_arrays()


def test_dp_sgd_noise_is_drawn_from_the_devices_secret_generator_not_torchs() -> None:
    cfg = config()
    data = load_federated_data(cfg.data, cfg.partition)
    split = data.device_split(PARTITION)
    engine = private_engine(build_device_model(cfg, CatalogInfo.from_log(split.train), 1, PARTITION))
    parameters = engine.model.per_sample_parameters()
    samples = engine.model.training_samples(split.train, np.random.default_rng(0))
    schedule = PoissonSchedule(local_dp.samples_count(samples), 1)

    def noisy_gradients(seed: int) -> list[torch.Tensor]:
        optimizer = engine.optimizer(torch.optim.SGD(parameters, lr=0.0), noise_multiplier=1.0, clip_norm=1.0,
                                     schedule=schedule, noise_generator=np.random.default_rng(seed))
        torch.manual_seed(0)  # torch's own generator is the same every time: it must not be the noise's source
        engine.step(optimizer, {key: value[:4] for key, value in samples.items()})
        return [parameter.grad.clone() for parameter in parameters if parameter.grad is not None]

    first, again, other = noisy_gradients(1), noisy_gradients(1), noisy_gradients(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))
