"""The batched one-step round against the per-device path: the same FedAvg sum, losses and counts."""

from __future__ import annotations

import numpy as np
import pytest
from model_options import SMALL_OPTIONS

from recsys_core.errors import ConfigError
from recsys_core.federated.aggregation import sum_plain_updates
from recsys_core.federated.cohort import evaluate_cohort, train_cohort
from recsys_core.federated.cohort_batch import evaluate_cohort_batched, evaluation_blockers, train_one_step_cohort
from recsys_core.federated.cohort_state import CohortStates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.state import TrainOutcome, state_to_arrays
from recsys_core.metrics import MetricSums

# Randomness inside the forward pass (dropout, a VAE's draw) is drawn per cohort, not per device: switched off
# here so the two paths must agree to float rounding.
DETERMINISTIC = {
    "neumf": SMALL_OPTIONS["neumf"],
    "caser": {**SMALL_OPTIONS["caser"], "dropout": 0.0},
    "sasrec": {**SMALL_OPTIONS["sasrec"], "dropout": 0.0},
    "mult_dae": {**SMALL_OPTIONS["mult_dae"], "dropout": 0.0},
    "gru4rec": {**SMALL_OPTIONS["gru4rec"], "dropout": 0.0},
}


def one_step_config(model: str, options: dict, **local: object) -> FederatedConfig:
    return FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": 30, "n_items": 40, "seed": 1}},
        "model": {"name": model, "options": options},
        "local": {"epochs": 1, "batch_size": 100000, "optimizer": "sgd", "learning_rate": 0.5,
                  "private_learning_rate": 2.0, **local},
        "server": {"devices_per_round": 12},
        "simulation": {"engine": "cohort", "failing_partitions": [5]},
    }).validate()


@pytest.mark.parametrize("chunk_bytes", [1 << 22, 3], ids=["one pass", "chunks"])
@pytest.mark.parametrize("model", sorted(DETERMINISTIC))
def test_one_batched_gradient_is_the_sum_of_every_devices_step(model: str, chunk_bytes: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks split the cohort into several forward passes whose gradients add up.
    monkeypatch.setattr("recsys_core.federated.cohort_batch.CHUNK_BYTES", chunk_bytes)
    config = one_step_config(model, DETERMINISTIC[model])
    data = load_federated_data(config.data, config.partition)
    shared = state_to_arrays(build_device_model(config, data.catalog, 1, 0).shared_state())
    partitions = [0, 2, 3, 5, 8, 13, 21, 29]
    # Devices 0 and 2 trained before (their private rows are stored), the others start from their seeded draw.
    states = CohortStates()
    train_cohort(config, data, shared, states, [0, 2], server_round=1)
    before = CohortStates(dict(states.states))
    batched = train_one_step_cohort(config, data, shared, partitions, server_round=4, states=states)
    assert states.states == before.states, "the batched round changed the store before it was accepted"
    one_by_one = train_cohort(config, data, shared, states, partitions, server_round=4)
    outcomes = {p: r for p, r in one_by_one.items() if isinstance(r, TrainOutcome)}
    assert sorted(batched.failed) == [5] and 5 not in outcomes
    assert batched.partitions == sorted(outcomes) and not batched.one_by_one
    assert batched.num_examples == [outcomes[p].num_examples for p in batched.partitions]
    assert batched.train_losses == pytest.approx([outcomes[p].train_loss for p in batched.partitions], rel=1e-5)
    expected = sum_plain_updates(config, shared, [(o.payload, o.num_examples, o.train_loss)
                                                  for _, o in sorted(outcomes.items())])
    measured = batched.round_sum
    assert measured.weight_sum == expected.weight_sum and measured.contributors == expected.contributors
    assert measured.loss_sum == pytest.approx(expected.loss_sum, rel=1e-5)
    moved = 0.0
    for name, value in expected.update_sum.items():
        mean_expected, mean_measured = value / expected.weight_sum, measured.update_sum[name] / measured.weight_sum
        np.testing.assert_allclose(mean_measured, mean_expected, atol=1e-6, err_msg=name)
        moved = max(moved, float(np.abs(mean_expected).max()))
    assert moved > 1e-3, "the step moved nothing; the comparison would pass vacuously"
    # Each device's private rows took its own step (NeuMF's and Caser's user embeddings).
    assert batched.device_states.keys() == ({p for p in outcomes if outcomes[p].device_state.private_parameters})
    for partition, state in batched.device_states.items():
        expected_state = outcomes[partition].device_state
        assert state.optimizer_state.keys() == expected_state.optimizer_state.keys()
        for name, value in expected_state.private_parameters.items():
            np.testing.assert_allclose(state.private_parameters[name], value, atol=1e-6, err_msg=name)


def test_a_device_with_more_samples_than_the_batch_is_left_to_the_per_device_path() -> None:
    config = one_step_config("sasrec", DETERMINISTIC["sasrec"], batch_size=1)
    data = load_federated_data(config.data, config.partition)
    shared = state_to_arrays(build_device_model(config, data.catalog, 1, 0).shared_state())
    # SASRec has one sample per user: with two users on a device it takes two steps of one sample each.
    two_users = FederatedConfig.from_dict({**__import__("json").loads(config.to_json()),
                                           "partition": {"users_per_device": 2}}).validate()
    batched = train_one_step_cohort(two_users, load_federated_data(two_users.data, two_users.partition), shared,
                                    [0, 1, 2], server_round=1)
    assert batched.one_by_one == [0, 1, 2] and batched.partitions == []
    assert train_one_step_cohort(config, data, shared, [0, 1], 1).partitions == [0, 1]


@pytest.mark.parametrize(("change", "named"), [
    ({"local": {"epochs": 2}}, "local.epochs = 2"),
    ({"local": {"optimizer": "adam"}}, "local.optimizer = 'adam'"),
    ({"model": {"name": "irgan"}}, "auxiliary training phase"),
    ({"privacy": {"user_level": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0}}},
     "privacy.user_level"),
])
def test_asking_for_the_batched_path_where_it_would_change_the_maths_names_the_option(change, named) -> None:
    values = {"data": {"synthetic": {"n_users": 30, "n_items": 40}}, "model": {"name": "sasrec"},
              "local": {"epochs": 1, "optimizer": "sgd"},
              "simulation": {"engine": "cohort", "batching": "on"}}
    for section, settings in change.items():
        values[section] = {**values.get(section, {}), **settings}
    with pytest.raises(ConfigError, match="simulation.batching = 'on' cannot run this config exactly"):
        try:
            FederatedConfig.from_dict(values).validate()
        except ConfigError as error:
            assert named in str(error)
            raise


@pytest.mark.parametrize("model", ["sasrec", "mult_vae", "gru4rec"])
def test_devices_evaluated_together_report_the_sum_of_their_own_evaluations(model: str) -> None:
    config = one_step_config(model, SMALL_OPTIONS[model])
    data = load_federated_data(config.data, config.partition)
    shared = state_to_arrays(build_device_model(config, data.catalog, 1, 0).shared_state())
    partitions = list(range(0, 30, 2))
    done: list[int] = []
    with_chunks = pytest.MonkeyPatch.context()
    with with_chunks as patch:
        patch.setattr("recsys_core.federated.cohort_batch.EVALUATION_CHUNK", 4)
        together = evaluate_cohort_batched(config, data, shared, partitions, "test", done.append)
    assert done == [4, 8, 12, 15]
    alone = MetricSums()
    for result in evaluate_cohort(config, data, shared, CohortStates(), partitions, "test").values():
        assert isinstance(result, MetricSums)
        alone.add(result)
    assert together.num_users == alone.num_users == len(partitions)
    assert together.sums.keys() == alone.sums.keys()
    for name, value in alone.sums.items():
        assert together.sums[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert alone.sums["sampled/hr@10"] > 0


def test_devices_with_private_parameters_are_evaluated_alone() -> None:
    config = one_step_config("neumf", SMALL_OPTIONS["neumf"])
    assert evaluation_blockers(config) == ["model 'neumf' ranks with each device's private parameters"]


def test_a_pass_holds_devices_up_to_a_budget_of_sample_bytes_not_of_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_core.federated.cohort_batch import _chunks

    monkeypatch.setattr("recsys_core.federated.cohort_batch.CHUNK_BYTES", 300)
    # Ten devices of one 150-byte sequence each fill a pass two at a time; a device above the budget still gets a
    # pass of its own.
    assert _chunks([150] * 10) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert _chunks([3] * 4 + [1000, 3]) == [(0, 4), (4, 5), (5, 6)]
