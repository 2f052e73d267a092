"""The device-side update, without Flower: private state stays, evaluation sums match central."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from federated_test_helpers import SMALL, config, global_shared
from model_options import SMALL_OPTIONS

from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device import (
    SimulatedDeviceError,
    evaluate_on_device,
    refit_private_parameters,
    train_on_device,
)
from recsys_core.federated.device_model import build_device_model, load_device_model
from recsys_core.federated.state import DeviceState, state_to_arrays
from recsys_core.metrics import MetricSums
from recsys_core.models import MODELS, CatalogInfo, build_model
from recsys_core.training import evaluate_model, seeded


def test_training_returns_shared_parameters_only_and_keeps_private_state() -> None:
    cfg = config()
    data = load_federated_data(cfg.data, cfg.partition)
    shared = global_shared(cfg)
    outcome = train_on_device(cfg, data.device_split(3), shared, None, 1, 3)
    assert set(outcome.shared_parameters) == set(shared)
    assert not any("user" in name for name in outcome.shared_parameters)
    assert set(outcome.device_state.private_parameters) == {"gmf_user_embedding.weight", "mlp_user_embedding.weight"}
    assert outcome.device_state.private_parameters["gmf_user_embedding.weight"].shape == (1, 8)
    assert outcome.num_examples == data.device_split(3).train.n_interactions
    # The next round starts from the kept private state and its optimiser moments.
    again = train_on_device(cfg, data.device_split(3), outcome.shared_parameters, outcome.device_state, 2, 3)
    assert again.device_state.optimizer_state
    before = outcome.device_state.private_parameters["gmf_user_embedding.weight"]
    assert not np.array_equal(before, again.device_state.private_parameters["gmf_user_embedding.weight"])


def test_same_round_same_partition_same_update() -> None:
    cfg = config()
    data = load_federated_data(cfg.data, cfg.partition)
    shared = global_shared(cfg)
    first = train_on_device(cfg, data.device_split(5), shared, None, 4, 5)
    second = train_on_device(cfg, data.device_split(5), shared, None, 4, 5)
    for name in shared:
        np.testing.assert_array_equal(first.shared_parameters[name], second.shared_parameters[name])


def test_device_evaluation_sums_equal_one_central_pass() -> None:
    cfg = config()
    data = load_federated_data(cfg.data, cfg.partition)
    with seeded(3):
        central = build_model("neumf", CatalogInfo.from_log(data.split.train), SMALL)
    from recsys_core.data.sampling import SeenItems

    seen = SeenItems.from_logs(data.split.train, data.split.valid, data.split.test)
    expected = evaluate_model(central, data.split, "test", seen, cfg.evaluation).means()
    shared = state_to_arrays(central.shared_state())
    total = MetricSums()
    for partition in range(data.num_devices):
        user = int(data.partitioners[0].users_of(partition)[0])
        private = {name: value[user : user + 1].detach().numpy()
                   for name, value in central.private_state().items()}
        total.add(evaluate_on_device(cfg, data.device_split(partition), shared, DeviceState(private, {}),
                                     "test", partition))
    measured = total.means()
    for name, value in expected.items():
        if "coverage" not in name:
            assert measured[name] == pytest.approx(value, abs=1e-9), name


def test_fault_injection_fails_the_named_partition() -> None:
    cfg = config(simulation={"failing_partitions": [2]})
    data = load_federated_data(cfg.data, cfg.partition)
    with pytest.raises(SimulatedDeviceError, match="partition 2"):
        train_on_device(cfg, data.device_split(2), global_shared(cfg), None, 1, 2)


def test_more_clients_per_round_than_clients_is_rejected() -> None:
    from recsys_core.errors import ConfigError

    with pytest.raises(ConfigError, match="devices_per_round = 50 but the federation has only 40"):
        config().validate(num_devices=40)


def test_sequence_models_have_nothing_private() -> None:
    cfg = config(model={"name": "sasrec", "options": {"hidden_dim": 16, "max_length": 10}})
    data = load_federated_data(cfg.data, cfg.partition)
    outcome = train_on_device(cfg, data.device_split(0), global_shared(cfg), None, 1, 0)
    assert outcome.device_state.private_parameters == {}
    assert torch.is_tensor(torch.from_numpy(outcome.shared_parameters["item_embedding.weight"]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_on_a_device_and_keeps_its_private_part(name: str) -> None:
    rounds = 20 if MODELS[name].trains_with_gradients else MODELS[name].config_class().statistics_rounds
    cfg = config(model={"name": name, "options": SMALL_OPTIONS.get(name, {})}, server={"rounds": rounds})
    data = load_federated_data(cfg.data, cfg.partition)
    shared = global_shared(cfg)
    outcome = train_on_device(cfg, data.device_split(1), shared, None, 1, 1)
    assert set(outcome.shared_parameters) == set(shared)
    model = build_device_model(cfg, data.catalog, 1, 1)
    assert set(outcome.device_state.private_parameters) == set(model.private_state())
    assert not set(outcome.shared_parameters) & set(model.private_state())
    sums = evaluate_on_device(cfg, data.device_split(1), outcome.shared_parameters, outcome.device_state, "test", 1)
    assert sums.num_users == 1


def test_refit_moves_only_private_parameters_and_lowers_the_local_loss() -> None:
    cfg = config(local={"epochs": 1, "learning_rate": 0.01, "private_refit_epochs": 5})
    data = load_federated_data(cfg.data, cfg.partition)
    split = data.device_split(7)
    shared = global_shared(cfg)

    def device_model():
        model = build_device_model(cfg, CatalogInfo.from_log(split.train), 1, 7)
        load_device_model(model, shared, None)
        return model

    def local_loss(model) -> float:
        with seeded(0), torch.no_grad():
            samples = model.training_samples(split.train, np.random.default_rng(0))
            return float(model.per_sample_loss(samples).mean())

    before, refitted, again = device_model(), device_model(), device_model()
    refit_private_parameters(cfg, refitted, split, 7)
    refit_private_parameters(cfg, again, split, 7)
    for name, value in before.shared_state().items():
        torch.testing.assert_close(refitted.shared_state()[name], value, rtol=0, atol=0)
    for name, value in before.private_state().items():
        assert not torch.equal(refitted.private_state()[name], value), name
        torch.testing.assert_close(again.private_state()[name], refitted.private_state()[name], rtol=0, atol=0)
    assert local_loss(refitted) < local_loss(before)


def test_user_level_privacy_sends_the_clipped_update_and_hides_count_and_loss() -> None:
    clip_norm = 0.05
    cfg = config(privacy={"user_level": {"enabled": True, "clip_norm": clip_norm, "target_delta": 1e-3}})
    data = load_federated_data(cfg.data, cfg.partition)
    shared = global_shared(cfg)
    outcome = train_on_device(cfg, data.device_split(3), shared, None, 1, 3)
    plain = train_on_device(config(), data.device_split(3), shared, None, 1, 3)
    update = outcome.clipped_update
    assert update is not None and outcome.payload is update and set(update) == set(shared)
    norm = np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update.values()))
    assert norm <= clip_norm
    # Central noise: the device sends its true update scaled down to the clip norm, nothing else.
    true_update = {n: plain.shared_parameters[n] - shared[n] for n in shared}
    true_norm = np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in true_update.values()))
    assert true_norm > clip_norm
    for name in shared:
        np.testing.assert_allclose(update[name], true_update[name] * (norm / true_norm), atol=1e-6)
    assert outcome.num_examples == 1 and np.isnan(outcome.train_loss)
    assert set(outcome.device_state.private_parameters) == set(plain.device_state.private_parameters)


def test_distributed_user_level_noise_is_added_on_the_device() -> None:
    sections = {"enabled": True, "clip_norm": 0.05, "target_delta": 1e-3, "noise_multiplier": 2.0,
                "noise_placement": "distributed", "min_surviving_devices": 4}
    cfg = config(privacy={"user_level": sections}, server={"devices_per_round": 8})
    data = load_federated_data(cfg.data, cfg.partition)
    shared = global_shared(cfg)
    first = train_on_device(cfg, data.device_split(3), shared, None, 1, 3).clipped_update
    second = train_on_device(cfg, data.device_split(3), shared, None, 1, 3).clipped_update
    assert first is not None and second is not None
    # Same seed, same training: only the secret noise differs, with std sigma * C / sqrt(4) per coordinate.
    difference = np.concatenate([(first[n] - second[n]).ravel() for n in first])
    assert np.std(difference) == pytest.approx(np.sqrt(2) * 2.0 * 0.05 / 2, rel=0.1)


def test_user_level_privacy_releases_a_counting_model_once_and_needs_fedavg_or_fedadam() -> None:
    from recsys_core.errors import ConfigError

    user_level = {"user_level": {"enabled": True, "target_delta": 1e-3}}
    with pytest.raises(ConfigError, match="server.rounds: model 'popularity' is fitted by counting.*"
                                          "set server.rounds = 1"):
        config(privacy=user_level, model={"name": "popularity"}, server={"rounds": 2})
    assert config(privacy=user_level, model={"name": "popularity"}, server={"rounds": 1}).privacy.user_level.enabled
    with pytest.raises(ConfigError, match="privacy.local: model 'item_knn' is fitted by counting"):
        config(privacy={"local": {"enabled": True, "target_delta": 1e-3}}, model={"name": "item_knn"},
               server={"rounds": 6})
    # Item k-NN releases its counts once and its table pair_releases times.
    with pytest.raises(ConfigError, match="server.rounds: model 'item_knn' .* set server.rounds = 3 \\(got 6\\)"):
        config(privacy=user_level, model={"name": "item_knn", "options": {"pair_releases": 2}}, server={"rounds": 6})
    with pytest.raises(ConfigError, match="server.strategy 'fedavg' or 'fedadam', got 'fedyogi'"):
        config(privacy=user_level, server={"strategy": "fedyogi"})


def test_server_learning_rate_schedule_is_constant_or_a_cosine_to_the_final_rate() -> None:
    from recsys_core.errors import ConfigError
    from recsys_core.federated.config import ServerConfig

    constant = ServerConfig(rounds=10, server_learning_rate=3.0)
    assert [constant.learning_rate_at(r) for r in (1, 5, 10)] == [3.0, 3.0, 3.0]
    cosine = ServerConfig(rounds=11, server_learning_rate=3.0, final_server_learning_rate=1.0).validate()
    rates = [cosine.learning_rate_at(r) for r in range(1, 12)]
    assert rates[0] == 3.0 and rates[5] == pytest.approx(2.0) and rates[-1] == pytest.approx(1.0)
    assert rates == sorted(rates, reverse=True)
    with pytest.raises(ConfigError, match="server.final_server_learning_rate"):
        ServerConfig(server_learning_rate=1.0, final_server_learning_rate=2.0).validate()


@pytest.mark.parametrize(("name", "unit"), [("neumf", "interaction"), ("mult_dae", "user"), ("mult_vae", "user")])
def test_a_device_reports_its_examples_in_the_models_unit(name: str, unit: str) -> None:
    """FedAvg weights an autoencoder device by its users: its loss already sums over each history."""
    cfg = config(model={"name": name, "options": SMALL_OPTIONS.get(name, {})})
    data = load_federated_data(cfg.data, cfg.partition)
    split = data.device_split(4)
    outcome = train_on_device(cfg, split, global_shared(cfg), None, 1, 4)
    assert MODELS[name].example_unit == unit
    expected = split.train.n_users if unit == "user" else split.train.n_interactions
    assert split.train.n_interactions > split.train.n_users >= 1
    assert outcome.num_examples == expected


@pytest.mark.parametrize("name", ["popularity", "item_knn"])
def test_a_counting_models_private_release_is_its_statistics_clipped_and_noised(name: str) -> None:
    """Private popularity and item k-NN: the device sends its statistics, clipped to C, with its noise share."""
    clip_norm, sigma, survivors = 0.5, 2.0, 4
    sections = {"enabled": True, "clip_norm": clip_norm, "target_delta": 1e-3, "noise_multiplier": sigma,
                "noise_placement": "distributed", "min_surviving_devices": survivors}
    rounds = MODELS[name].config_class().statistics_rounds
    noiseless = config(privacy={"user_level": {**sections, "noise_placement": "central"}}, model={"name": name},
                       server={"rounds": rounds, "devices_per_round": 8})
    noisy = config(privacy={"user_level": sections}, model={"name": name},
                   server={"rounds": rounds, "devices_per_round": 8})
    data = load_federated_data(noisy.data, noisy.partition)
    split = data.device_split(3)
    shared = global_shared(noisy)
    statistics = build_device_model(noisy, CatalogInfo.from_log(split.train), split.train.n_users, 3)
    statistics.fit_statistics_round(split.train, 1)
    released = noisy.released_arrays(1) or tuple(shared)
    exact = np.concatenate([statistics.shared_state()[name].numpy().ravel() for name in released])
    clipped = train_on_device(noiseless, split, shared, None, 1, 3).clipped_update
    assert clipped is not None
    # Arrays a round does not release stay exactly zero, noise and all.
    assert all(not np.any(clipped[name]) for name in clipped if name not in released)
    sent = np.concatenate([clipped[name].ravel() for name in released])
    # Central placement: the update is the statistics scaled to norm C, nothing added on the device.
    np.testing.assert_allclose(sent, exact * min(1.0, clip_norm / np.linalg.norm(exact)), rtol=1e-5, atol=1e-7)
    shares = []
    # Twenty draws: enough coordinates (1,600 for 80 items) that the measured std is within 10% by far.
    for _ in range(20):
        shared_with_noise = train_on_device(noisy, split, shared, None, 1, 3).clipped_update
        assert shared_with_noise is not None
        assert all(not np.any(shared_with_noise[name]) for name in shared_with_noise if name not in released)
        shares.append(np.concatenate([shared_with_noise[name].ravel() for name in released]) - sent)
    assert np.std(np.concatenate(shares)) == pytest.approx(sigma * clip_norm / np.sqrt(survivors), rel=0.1)
