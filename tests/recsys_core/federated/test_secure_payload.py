"""What goes into a masked vector and what the server reads back from the sum."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.secure_payload import (
    evaluation_layout,
    evaluation_sums,
    evaluation_values,
    training_layout,
    training_sum,
    training_values,
    update_clip_range,
)
from recsys_core.metrics import EvaluationConfig, MetricSums, metric_names

RECEIVED = {"item.weight": np.zeros((3, 2), dtype=np.float32), "bias": np.zeros(2, dtype=np.float32)}


def test_the_sum_of_training_vectors_gives_the_example_weighted_mean() -> None:
    config = FederatedConfig.from_dict({"secure_aggregation": {"enabled": True}})
    layout = training_layout(config, RECEIVED)
    devices = [({"item.weight": np.full((3, 2), 0.1), "bias": np.array([0.2, -0.2])}, 10, 0.5),
               ({"item.weight": np.full((3, 2), -0.3), "bias": np.array([0.0, 0.4])}, 30, 0.7)]
    total = sum(layout.pack(training_values(layout, RECEIVED, params, n, loss, weight_scale=40.0,
                                            user_level=False)) for params, n, loss in devices)
    round_sum = training_sum(layout, total).round_sum(RECEIVED, contributors=2, reports_loss=True)
    mean = {name: value / round_sum.weight_sum for name, value in round_sum.update_sum.items()}
    assert mean["item.weight"] == pytest.approx(np.full((3, 2), (10 * 0.1 + 30 * -0.3) / 40))
    assert mean["bias"] == pytest.approx([(10 * 0.2) / 40, (10 * -0.2 + 30 * 0.4) / 40])
    assert round_sum.loss_sum / round_sum.loss_weight == pytest.approx((10 * 0.5 + 30 * 0.7) / 40)
    assert round_sum.clipped_coordinates == 0 and round_sum.contributors == 2


def test_coordinates_beyond_the_range_are_counted() -> None:
    config = FederatedConfig.from_dict({"secure_aggregation": {"enabled": True, "update_clip_range": 0.05}})
    layout = training_layout(config, RECEIVED)
    values = training_values(layout, RECEIVED, {"item.weight": np.full((3, 2), 0.1), "bias": np.zeros(2)}, 10,
                             0.5, weight_scale=10.0, user_level=False)
    assert values["clipped-coordinates"][0] == 6


def test_user_level_updates_are_unweighted_and_the_range_covers_the_noise() -> None:
    config = FederatedConfig.from_dict({
        "secure_aggregation": {"enabled": True},
        "privacy": {"user_level": {"enabled": True, "noise_placement": "distributed", "clip_norm": 2.0,
                                   "noise_multiplier": 1.0, "min_surviving_devices": 4}}})
    layout = training_layout(config, RECEIVED)
    assert [segment.name for segment in layout.segments][-1] == "clipped-coordinates"
    assert "weight" not in {segment.name for segment in layout.segments}
    assert update_clip_range(config) == pytest.approx(2.0 + 10 * 1.0 * 2.0 / 2)


def test_evaluation_vectors_carry_every_metric_sum_and_the_user_count() -> None:
    config = EvaluationConfig(cutoffs=(10,))
    layout = evaluation_layout(config, max_users_per_device=5)
    sums = MetricSums({name: 0.25 * (i + 1) for i, name in enumerate(metric_names(config))}, 3)
    restored = evaluation_sums(layout, layout.pack(evaluation_values(layout, sums)) * 2)
    assert restored.num_users == 6
    assert restored.sums == pytest.approx({name: 2 * value for name, value in sums.sums.items()})
