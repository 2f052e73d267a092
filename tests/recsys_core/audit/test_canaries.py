"""Canaries: drawn from a seed over distinct users, inserted by coin, recorded, and absent from evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.audit.canaries import CanaryConfig, insert_canaries, plan_canaries, without_canaries
from recsys_core.data.interactions import IdMap, InteractionLog
from recsys_core.data.splits import DatasetSplit, SplitConfig, split_log
from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic
from recsys_core.errors import ConfigError


def split() -> DatasetSplit:
    return split_log(generate_synthetic(SyntheticConfig(n_users=80, n_items=30, seed=1)), SplitConfig())


def test_canaries_are_one_per_distinct_user_each_with_its_own_new_item() -> None:
    original = split()
    grown, plan = insert_canaries(original, CanaryConfig(count=40, seed=3))
    assert plan is not None and plan.count == 40 and len(set(plan.users.tolist())) == 40
    assert plan.items.tolist() == list(range(30, 70))
    assert grown.train.n_items == grown.valid.n_items == grown.test.n_items == 70
    # Exactly the included canaries are in the training data, once each; evaluation rows are untouched.
    canary_rows = np.isin(grown.train.item_ids, plan.items)
    assert sorted(zip(grown.train.user_ids[canary_rows].tolist(), grown.train.item_ids[canary_rows].tolist())) == \
        sorted(zip(plan.users[plan.included].tolist(), plan.items[plan.included].tolist()))
    assert 10 < plan.included.sum() < 30
    assert grown.train.n_interactions == original.train.n_interactions + int(plan.included.sum())
    assert np.array_equal(grown.test.item_ids, original.test.item_ids)
    # A canary is its user's most recent training interaction.
    for user, item in zip(plan.users[plan.included], plan.items[plan.included], strict=True):
        assert grown.train.items_of(int(user))[-1] == item
    assert np.array_equal(without_canaries(grown.train, plan).item_ids, original.train.item_ids)


def test_the_plan_is_a_function_of_the_seed_and_the_null_control_inserts_nothing() -> None:
    original = split()
    first = plan_canaries(original.train, CanaryConfig(count=20, seed=5))
    again = plan_canaries(original.train, CanaryConfig(count=20, seed=5))
    other = plan_canaries(original.train, CanaryConfig(count=20, seed=6))
    assert np.array_equal(first.users, again.users) and np.array_equal(first.included, again.included)
    assert not (np.array_equal(first.users, other.users) and np.array_equal(first.included, other.included))
    grown, null_plan = insert_canaries(original, CanaryConfig(count=20, seed=5, insert=False))
    assert null_plan is not None and np.array_equal(null_plan.included, first.included)
    assert grown.train.n_interactions == original.train.n_interactions and grown.train.n_items == 50


def test_string_item_ids_get_named_canary_items_and_the_record_uses_original_ids() -> None:
    log = InteractionLog.from_arrays(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]), np.arange(4), None,
                                     IdMap(np.array(["u1", "u2"], dtype=object)),
                                     IdMap(np.array(["sku-a", "sku-b"], dtype=object)))
    empty = log.select(np.zeros(4, dtype=bool))
    grown, plan = insert_canaries(DatasetSplit(log, empty, empty), CanaryConfig(count=2, seed=0))
    assert plan is not None
    record = plan.to_dict(grown.train)
    assert record["users"] == ["u1", "u2"] and record["items"] == ["audit-canary-00000", "audit-canary-00001"]


def test_more_canaries_than_users_is_refused_with_the_limit() -> None:
    with pytest.raises(ConfigError, match="at most 80"):
        insert_canaries(split(), CanaryConfig(count=81))
    with pytest.raises(ConfigError, match="data.canaries.count"):
        CanaryConfig(count=-1).validate()
