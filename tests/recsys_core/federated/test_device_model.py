"""The model a device runs: a template copy is the built model once the global model is loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from federated_test_helpers import config, global_shared
from model_options import SMALL_OPTIONS

from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device_model import (
    build_device_model,
    fresh_device_model,
    initial_private_parameters,
    load_device_model,
)
from recsys_core.models import MODELS, CatalogInfo


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_fresh_device_model_is_the_built_model_once_the_global_model_is_loaded(name: str) -> None:
    cfg = config(model={"name": name, "options": SMALL_OPTIONS.get(name, {})})
    data = load_federated_data(cfg.data, cfg.partition)
    split = data.device_split(2)
    shared = global_shared(cfg)
    catalog = CatalogInfo.from_log(split.train)
    built = build_device_model(cfg, catalog, split.train.n_users, 2)
    fresh = fresh_device_model(cfg, catalog, split.train.n_users, 2)
    for model in (built, fresh):
        load_device_model(model, shared, None)
    assert type(fresh) is type(built) and fresh.training == built.training
    assert fresh.catalog.n_users == built.catalog.n_users == split.train.n_users
    assert np.array_equal(fresh.catalog.item_popularity, built.catalog.item_popularity)
    assert set(fresh.state_dict()) == set(built.state_dict())
    for key, value in built.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # Each call gives its own copy: training one device's model leaves the next one untouched.
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.add_(1.0)
    again = fresh_device_model(cfg, catalog, split.train.n_users, 2)
    load_device_model(again, shared, None)
    for key, value in built.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_a_devices_initial_private_rows_depend_on_its_seed_alone() -> None:
    cfg = config(model={"name": "neumf", "options": SMALL_OPTIONS.get("neumf", {})})
    small, large = CatalogInfo(n_users=1, n_items=50), CatalogInfo(n_users=1, n_items=5000)
    first = build_device_model(cfg, small, 1, 7).private_state()
    # Another catalogue draws the item tables differently; the device's own rows stay the same.
    assert all(torch.equal(first[key], value) for key, value in build_device_model(cfg, large, 1, 7)
               .private_state().items())
    drawn = initial_private_parameters(cfg, build_device_model(cfg, large, 1, 0), 1, 7)
    assert set(drawn) == set(first) and all(torch.equal(first[key], drawn[key]) for key in first)
    other = build_device_model(cfg, small, 1, 8).private_state()
    assert not any(torch.equal(first[key], other[key]) for key in first)
