"""Our FedAdam step on an already-aggregated model is Flower's FedAdam, bit for bit up to float32."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg

from server.strategies import fedadam_step


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
