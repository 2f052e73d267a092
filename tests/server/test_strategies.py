"""Our FedAdam step on an already-aggregated model is Flower's FedAdam, bit for bit up to float32."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg

from recsys_core.errors import ConfigError
from recsys_core.federated.config import ServerConfig
from server.strategies import apply_mean_update, build_strategy, fedadam_step


def test_fedadam_step_matches_flowers_fedadam_over_several_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = np.random.default_rng(0)
    flower, ours = FedAdam(eta=0.1), FedAdam(eta=0.1)
    flower_arrays = ours_arrays = {"w": generator.normal(size=(3, 2)).astype(np.float32)}
    for server_round in (1, 2, 3):
        target = {"w": (ours_arrays["w"] + generator.normal(size=(3, 2))).astype(np.float32)}
        # Flower's FedAdam first averages the replies (FedAvg); hand it the average directly.
        monkeypatch.setattr(FedAvg, "aggregate_train",
                            lambda self, _round, _replies, t=target: (ArrayRecord({"w": Array(t["w"])}), None))
        flower.current_arrays = {"w": flower_arrays["w"].copy()}
        aggregated, _ = flower.aggregate_train(server_round, [])
        flower_arrays = {name: array.numpy() for name, array in aggregated.items()}
        ours_arrays = fedadam_step(ours, ours_arrays, target, server_round)
        assert ours_arrays["w"].dtype == np.float32
        np.testing.assert_allclose(ours_arrays["w"], flower_arrays["w"], atol=1e-6)
        assert set(ours.m_t) == set(ours.v_t) == {"w"}


@pytest.mark.parametrize(("strategy", "expected"), [("fedavg", [1.0 + 3.0 * 0.5]), ("fedprox", [1.5])])
def test_a_mean_update_is_applied_as_the_strategy_would(strategy: str, expected: list[float]) -> None:
    built = build_strategy(ServerConfig(strategy=strategy, server_learning_rate=3.0), proximal_mu=0.1)
    current = {"w": np.array([1.0], dtype=np.float32)}
    updated = apply_mean_update(built, current, {"w": np.array([0.5])}, server_round=1, server_learning_rate=3.0)
    assert updated["w"].dtype == np.float32 and updated["w"].tolist() == pytest.approx(expected)


def test_a_mean_update_under_fedadam_is_flowers_fedadam_step() -> None:
    current = {"w": np.array([1.0, -2.0], dtype=np.float32)}
    mean = {"w": np.array([0.2, 0.1])}
    ours = build_strategy(ServerConfig(strategy="fedadam", server_learning_rate=0.1), proximal_mu=0.0)
    reference = build_strategy(ServerConfig(strategy="fedadam", server_learning_rate=0.1), proximal_mu=0.0)
    assert isinstance(reference, FedAdam)
    expected = fedadam_step(reference, current, {"w": current["w"] + mean["w"]}, 1)
    assert np.allclose(apply_mean_update(ours, current, mean, 1, 0.1)["w"], expected["w"])


def test_a_small_tau_lets_a_tiny_mean_update_move_a_weight_by_about_eta() -> None:
    """Flower's default tau (1e-3) damps a 1e-5 update a hundredfold; ``server.adaptivity_tau`` lifts that."""
    current = {"w": np.zeros(1, dtype=np.float32)}
    tiny = {"w": np.array([1e-5])}
    moves = {}
    for tau in (1e-3, 1e-8):
        strategy = build_strategy(ServerConfig(strategy="fedadam", server_learning_rate=0.01, adaptivity_tau=tau),
                                  proximal_mu=0.0)
        assert isinstance(strategy, FedAdam) and strategy.tau == tau
        moves[tau] = float(apply_mean_update(strategy, current, tiny, 1, 0.01)["w"][0])
    assert moves[1e-8] > 50 * moves[1e-3] > 0
    # Round 1: m = 0.1 g and sqrt(v) = 0.1 g, so the step is the bias-corrected eta itself, times 1 / (1 + tau / 1e-6).
    corrected_eta = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert moves[1e-8] == pytest.approx(corrected_eta / (1 + 1e-8 / 1e-6), rel=1e-4)


@pytest.mark.parametrize("tau", [0.0, -1e-3])
def test_a_non_positive_tau_is_rejected(tau: float) -> None:
    with pytest.raises(ConfigError, match="server.adaptivity_tau"):
        ServerConfig(adaptivity_tau=tau).validate()
