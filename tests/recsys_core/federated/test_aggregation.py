"""The one aggregation core: sums, gates, DP noise and server steps, checked against Flower's own strategies."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedProx, FedYogi

from recsys_core.errors import ConfigError
from recsys_core.federated.aggregation import (
    RoundSum,
    ServerOptimizer,
    apply_round,
    server_optimizer,
    sum_plain_updates,
)
from recsys_core.federated.config import FederatedConfig, ServerConfig

FLOWER = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}


def config(**sections: dict[str, Any]) -> FederatedConfig:
    return FederatedConfig.from_dict({"server": {"devices_per_round": 2, **sections.pop("server", {})}, **sections})


def flower_reply(arrays: dict[str, np.ndarray], num_examples: int) -> Any:
    """A stand-in for a reply Message: building a real one needs a running Flower app."""
    content = RecordDict({"arrays": ArrayRecord({name: Array(value) for name, value in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": num_examples})})
    return SimpleNamespace(content=content, has_error=lambda: False)


def set_current(strategy: Any, arrays: dict[str, np.ndarray]) -> None:
    """What Flower's ``configure_train`` records before a round: the arrays it sent."""
    if isinstance(strategy, FedAvgM):
        strategy.current_arrays = ArrayRecord({name: Array(value) for name, value in arrays.items()})
    elif not isinstance(strategy, FedProx):
        strategy.current_arrays = {name: value.copy() for name, value in arrays.items()}


def flower_strategy(name: str, rate: float, tau: float) -> Any:
    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1, "min_available_nodes": 1}
    if name == "fedavg":
        strategy = FedAvgM(server_learning_rate=rate, server_momentum=0.0, **common)
        strategy.server_opt = True
        return strategy
    if name == "fedprox":
        return FedProx(proximal_mu=0.1, **common)
    return FLOWER[name](eta=rate, tau=tau, **common)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_every_server_step_is_flowers_over_several_rounds(strategy: str) -> None:
    """The same replies through Flower's strategy and through apply_round give the same model, bit for bit.

    FedProx alone may differ in the last bit: Flower's FedProx returns the weighted mean
    itself, the core adds the mean update to the current model (FedAvg at server rate 1).
    """
    generator = np.random.default_rng(0)
    run = config(server={"strategy": strategy, "server_learning_rate": 0.3, "adaptivity_tau": 1e-3})
    flower = flower_strategy(strategy, 0.3, 1e-3)
    optimizer = server_optimizer(run)
    ours = theirs = {"w": generator.normal(size=(4, 3)).astype(np.float32), "b": np.zeros(3, dtype=np.float32)}
    for server_round in (1, 2, 3, 4):
        trained = [({name: (value + generator.normal(scale=0.1, size=value.shape)).astype(np.float32)
                     for name, value in ours.items()}, count) for count in (5, 20, 11)]
        set_current(flower, theirs)
        aggregated, _ = flower.aggregate_train(server_round, [flower_reply(a, n) for a, n in trained])
        theirs = {name: array.numpy().astype(np.float32) for name, array in aggregated.items()}
        summed = sum_plain_updates(run, ours, [(arrays, count, float("nan")) for arrays, count in trained])
        result = apply_round(run, ours, summed, optimizer, server_round)
        assert result.status == "aggregated" and result.arrays["w"].dtype == np.float32
        ours = result.arrays
        for name in ours:
            if strategy == "fedprox":
                np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-7)
            else:
                np.testing.assert_array_equal(ours[name], theirs[name])


def test_the_weighted_mean_and_loss_come_from_the_example_counts() -> None:
    run = config(server={"strategy": "fedavg", "server_learning_rate": 1.0})
    current = {"w": np.zeros(2, dtype=np.float32)}
    summed = sum_plain_updates(run, current, [({"w": np.array([1.0, 0.0], dtype=np.float32)}, 1, 0.5),
                                              ({"w": np.array([0.0, 1.0], dtype=np.float32)}, 3, float("nan"))])
    assert summed.weight_sum == 4 and summed.contributors == 2 and summed.loss_weight == 1
    result = apply_round(run, current, summed, server_optimizer(run), 1)
    np.testing.assert_allclose(result.arrays["w"], [0.25, 0.75])
    # The device that reported no loss (NaN, as under DP) is left out of the mean loss.
    assert result.train_loss == pytest.approx(0.5)


def test_too_few_updates_leave_the_model_unchanged_with_the_reason() -> None:
    run = config(server={"min_devices": 2})
    current = {"w": np.ones(2, dtype=np.float32)}
    summed = sum_plain_updates(run, current, [({"w": np.zeros(2, dtype=np.float32)}, 4, 0.1)])
    result = apply_round(run, current, summed, server_optimizer(run), 1)
    assert result.status == "skipped" and "server.min_devices = 2" in result.status_reason
    assert result.arrays is current


def test_a_distributed_noise_round_with_too_few_shares_is_discarded() -> None:
    run = config(privacy={"user_level": {"enabled": True, "noise_placement": "distributed",
                                         "min_surviving_devices": 2, "target_delta": 1e-2}})
    current = {"w": np.zeros(2, dtype=np.float32)}
    summed = RoundSum({"w": np.ones(2)}, 1.0, contributors=1)
    result = apply_round(run, current, summed, server_optimizer(run), 1)
    assert result.status == "discarded" and "min_surviving_devices = 2" in result.status_reason


def user_level_config(noise_multiplier: float) -> FederatedConfig:
    return config(server={"server_learning_rate": 1.0},
                  privacy={"user_level": {"enabled": True, "target_delta": 1e-2, "clip_norm": 0.5,
                                          "noise_multiplier": noise_multiplier}})


def test_user_level_dp_moves_by_the_server_rate_times_the_clipped_mean_over_the_planned_clients() -> None:
    run = user_level_config(1e-9)
    current = {"w": np.zeros(2, dtype=np.float32)}
    # The server clips again under central noise: a device that sent a long update counts as C.
    updates = [({"w": np.array([0.3, 0.4], dtype=np.float32)}, 1, float("nan")),
               ({"w": np.array([30.0, 40.0], dtype=np.float32)}, 1, float("nan"))]
    summed = sum_plain_updates(run, current, updates)
    assert summed.largest_update_norm == pytest.approx(50.0)
    result = apply_round(run, current, summed, server_optimizer(run), 1)
    np.testing.assert_allclose(result.arrays["w"], [0.3, 0.4], atol=1e-6)
    assert result.user_level is not None and result.user_level.updates == 2 and result.train_loss is None


def test_central_noise_has_the_declared_deviation_and_is_logged_as_measured() -> None:
    run = user_level_config(2.0)
    current = {"w": np.zeros(20_000, dtype=np.float32)}
    summed = sum_plain_updates(run, current, [({"w": np.zeros(20_000, dtype=np.float32)}, 1, float("nan"))])
    result = apply_round(run, current, summed, server_optimizer(run), 1, np.random.default_rng(3))
    # Noise std sigma * C on the sum, over the planned two clients.
    assert float(np.std(result.arrays["w"])) == pytest.approx(2.0 * 0.5 / 2, rel=0.05)
    evidence = result.user_level
    assert evidence is not None and evidence.noise_std_declared == 1.0
    assert evidence.noise_std_measured == pytest.approx(1.0, rel=0.05) and evidence.noise_coordinates == 20_000


def test_the_optimizer_state_survives_a_checkpoint() -> None:
    run = config(server={"strategy": "fedadam", "server_learning_rate": 0.1})
    current = {"w": np.zeros(3, dtype=np.float32)}
    summed = RoundSum({"w": np.array([1.0, -1.0, 0.5])}, 1.0, 1)
    first, resumed = server_optimizer(run), server_optimizer(run)
    after_one = apply_round(run, current, summed, first, 1).arrays
    resumed.restore(first.state())
    np.testing.assert_array_equal(apply_round(run, after_one, summed, first, 2).arrays["w"],
                                  apply_round(run, after_one, summed, resumed, 2).arrays["w"])


def test_a_small_tau_lets_a_tiny_mean_update_move_a_weight_by_about_eta() -> None:
    """Flower's default tau (1e-3) damps a 1e-5 update a hundredfold; ``server.adaptivity_tau`` lifts that."""
    current = {"w": np.zeros(1, dtype=np.float32)}
    moves = {}
    for tau in (1e-3, 1e-8):
        optimizer = ServerOptimizer("fedadam", tau)
        moves[tau] = float(optimizer.step(current, {"w": np.array([1e-5])}, 1, 0.01)["w"][0])
    assert moves[1e-8] > 50 * moves[1e-3] > 0
    # Round 1: m = 0.1 g and sqrt(v) = 0.1 g, so the step is the bias-corrected eta itself, times 1 / (1 + tau / 1e-6).
    corrected_eta = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert moves[1e-8] == pytest.approx(corrected_eta / (1 + 1e-8 / 1e-6), rel=1e-4)


@pytest.mark.parametrize("tau", [0.0, -1e-3])
def test_a_non_positive_tau_is_rejected(tau: float) -> None:
    with pytest.raises(ConfigError, match="server.adaptivity_tau"):
        ServerConfig(adaptivity_tau=tau).validate()


@pytest.mark.parametrize("placement", ["central", "distributed"])
def test_a_counting_models_round_changes_only_what_it_releases_whatever_a_device_sends(placement: str) -> None:
    # Item k-NN's round 2 releases the co-occurrence table; a hostile device that also sends counts
    # (which would carry no noise in that round) moves nothing, and central noise covers the table alone.
    run = FederatedConfig.from_dict({
        "model": {"name": "item_knn", "options": {"neighbourhood_items": 3}},
        "server": {"rounds": 2, "devices_per_round": 2, "server_learning_rate": 2.0},
        "privacy": {"user_level": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0,
                                   "target_delta": 1e-2, "noise_placement": placement,
                                   "min_surviving_devices": 2}}})
    current = {"item_counts": np.array([5.0, 3.0, 1.0, 0.5], dtype=np.float32),
               "cooccurrence": np.zeros((3, 3), dtype=np.float32)}
    honest = {"item_counts": np.zeros(4, dtype=np.float32), "cooccurrence": np.full((3, 3), 0.3, dtype=np.float32)}
    hostile = {"item_counts": np.array([0.0, 0.0, 0.0, 0.9], dtype=np.float32),
               "cooccurrence": np.zeros((3, 3), dtype=np.float32)}
    summed = sum_plain_updates(run, current, [(honest, 1, float("nan")), (hostile, 1, float("nan"))])
    result = apply_round(run, current, summed, server_optimizer(run), 2, np.random.default_rng(0))
    np.testing.assert_array_equal(result.arrays["item_counts"], current["item_counts"])
    assert not np.allclose(result.arrays["cooccurrence"], 0)
    if placement == "central":
        assert result.user_level is not None and result.user_level.noise_coordinates == 9


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_a_step_that_overflows_is_never_published_and_the_optimiser_state_is_kept(strategy: str) -> None:
    run = config(server={"strategy": strategy, "server_learning_rate": 10.0})
    current = {"w": np.ones(2, dtype=np.float32)}
    optimizer = server_optimizer(run)
    apply_round(run, current, sum_plain_updates(run, current, [({"w": np.full(2, 2.0, np.float32)}, 1, 0.1)]),
                optimizer, 1)
    moments = {name: value.copy() for name, value in optimizer.state().items()}
    huge = sum_plain_updates(run, current, [({"w": np.full(2, 3e38, np.float32)}, 1, 0.1)] * 2)
    result = apply_round(run, current, huge, optimizer, 2)
    assert result.status == "failed" and result.arrays is current
    assert "NaN or infinite values in [" in result.status_reason
    assert "The run stops here; checkpoint/ holds the last finite model" in result.fatal
    assert optimizer.state().keys() == moments.keys()
    for name, value in moments.items():
        np.testing.assert_array_equal(optimizer.state()[name], value)


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_a_robust_aggregate_bounds_what_one_hostile_update_can_do(method: str) -> None:
    run = config(server={"aggregation": method, "trim_fraction": 0.2, "server_learning_rate": 1.0,
                         "update_norm_ratio": 0.0})
    current = {"w": np.zeros(3, dtype=np.float32)}
    honest = [({"w": np.array([1.0, 2.0, 3.0], dtype=np.float32) + shift}, 10, 0.1) for shift in (-0.1, 0.0, 0.1, 0.2)]
    hostile = ({"w": np.full(3, 1e6, dtype=np.float32)}, 10, 0.1)
    result = apply_round(run, current, sum_plain_updates(run, current, [*honest, hostile]), server_optimizer(run), 1)
    # The median of five (or the mean of the middle three) lies among the honest values.
    assert np.all(result.arrays["w"] >= np.array([0.9, 1.9, 2.9])) and np.all(result.arrays["w"] <= [1.2, 2.2, 3.2])
    mean = config(server={"server_learning_rate": 1.0, "update_norm_ratio": 0.0})
    pulled = apply_round(mean, current, sum_plain_updates(mean, current, [*honest, hostile]), server_optimizer(mean), 1)
    assert np.all(pulled.arrays["w"] > 1e5)  # FedAvg's mean follows the one hostile device


def test_a_robust_aggregate_needs_each_update_in_clear() -> None:
    with pytest.raises(ConfigError, match="server.aggregation = 'median' needs each device's update in clear"):
        config(server={"aggregation": "median"}, secure_aggregation={"enabled": True}).validate()
