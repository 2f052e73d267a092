"""Client partitions: a disjoint cover of the users, each slicing exactly its users' rows."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.partitions import ClientPartitioner, PartitionConfig
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.errors import ConfigError


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return generate_synthetic(
        SyntheticConfig(n_users=103, n_items=60, mean_interactions_per_user=8)
    )


def _assert_same_log(actual: InteractionLog, expected: InteractionLog) -> None:
    for column in ("user_ids", "item_ids", "timestamps", "ratings"):
        np.testing.assert_array_equal(getattr(actual, column), getattr(expected, column))
    assert actual.user_map is expected.user_map and actual.item_map is expected.item_map
    assert actual.item_features is expected.item_features
    assert actual.name == expected.name


@pytest.mark.parametrize("users_per_device", [1, 4, 10, 103, 500])
def test_partitions_cover_users_disjointly(log: InteractionLog, users_per_device: int) -> None:
    partitioner = ClientPartitioner(log, PartitionConfig(users_per_device=users_per_device))
    expected_count = -(-log.n_users // users_per_device)
    assert partitioner.num_partitions == expected_count
    groups = [partitioner.users_of(p) for p in range(partitioner.num_partitions)]
    sizes = [len(group) for group in groups]
    assert all(size == users_per_device for size in sizes[:-1])
    assert 1 <= sizes[-1] <= users_per_device
    everyone = np.concatenate(groups)
    assert np.array_equal(np.sort(everyone), np.arange(log.n_users)), "not a disjoint cover"
    for partition_id, group in enumerate(groups):
        assert np.all(np.diff(group) > 0)
        assert np.all(partitioner.assignment[group] == partition_id)


@pytest.mark.parametrize("users_per_device", [1, 7])
def test_partition_is_the_full_logs_rows_of_its_users(
    log: InteractionLog, users_per_device: int
) -> None:
    partitioner = ClientPartitioner(log, PartitionConfig(users_per_device=users_per_device, seed=5))
    total = 0
    for partition_id in range(partitioner.num_partitions):
        part = partitioner.partition(partition_id)
        expected = log.select(np.isin(log.user_ids, partitioner.users_of(partition_id)))
        _assert_same_log(part, expected)
        total += part.n_interactions
    assert total == log.n_interactions


def test_cross_device_client_is_its_user(log: InteractionLog) -> None:
    partitioner = ClientPartitioner(log, PartitionConfig())
    assert partitioner.users_of(42).tolist() == [42]
    np.testing.assert_array_equal(partitioner.partition(42).item_ids, log.items_of(42))


def test_grouping_follows_the_seed(log: InteractionLog) -> None:
    def groups(seed: int) -> list[list[int]]:
        partitioner = ClientPartitioner(log, PartitionConfig(users_per_device=5, seed=seed))
        return [partitioner.users_of(p).tolist() for p in range(partitioner.num_partitions)]

    assert groups(1) == groups(1)
    assert groups(1) != groups(2)
    # A shuffle, not consecutive blocks of user ids.
    assert groups(1)[0] != [0, 1, 2, 3, 4]


def test_users_without_rows_get_empty_partitions(log: InteractionLog) -> None:
    without_user_3 = log.select(log.user_ids != 3)
    partitioner = ClientPartitioner(without_user_3, PartitionConfig())
    assert partitioner.num_partitions == log.n_users
    assert partitioner.partition(3).n_interactions == 0
    _assert_same_log(partitioner.partition(4), log.select(log.user_ids == 4))


def test_returned_arrays_do_not_expose_internal_state(log: InteractionLog) -> None:
    partitioner = ClientPartitioner(log, PartitionConfig(users_per_device=3))
    with pytest.raises(ValueError, match="read-only"):
        partitioner.users_of(0)[0] = 99
    part = partitioner.partition(0)
    part.item_ids[:] = -1
    assert log.item_ids.min() >= 0


@pytest.mark.parametrize("bad_id", [-1, 103, 1.0, True])
def test_out_of_range_partition_names_the_valid_range(log: InteractionLog, bad_id: object) -> None:
    partitioner = ClientPartitioner(log, PartitionConfig())
    with pytest.raises(ConfigError, match="partition id"):
        partitioner.partition(bad_id)  # type: ignore[arg-type]
    if isinstance(bad_id, int) and not isinstance(bad_id, bool):
        with pytest.raises(ConfigError, match=r"0 \.\. 102"):
            partitioner.users_of(bad_id)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"users_per_device": 0}, "users_per_device"),
        ({"users_per_device": 2.0}, "users_per_device"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_partition_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PartitionConfig(**kwargs).validate()
