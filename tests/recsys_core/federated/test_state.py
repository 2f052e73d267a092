"""What a device keeps between rounds survives the flat arrays it is stored as."""

from __future__ import annotations

import numpy as np

from recsys_core.federated.state import ACCOUNTANT_KEY, DeviceState


def test_device_state_round_trips_through_flat_arrays() -> None:
    state = DeviceState({"a.weight": np.ones((1, 2))}, {"0/exp_avg": np.zeros((1, 2)), "0/step": np.array(3.0)})
    restored = DeviceState.from_arrays(state.to_arrays())
    assert restored.private_parameters.keys() == state.private_parameters.keys()
    assert restored.optimizer_state.keys() == state.optimizer_state.keys()


def test_device_state_carries_the_privacy_accountant_through_flat_arrays() -> None:
    accountant = {"format": 1, "accountant": "rdp", "history": [[1.1, 0.25, 12]]}
    state = DeviceState({"a.weight": np.ones((1, 2))}, {}, accountant)
    flat = state.to_arrays()
    assert flat[ACCOUNTANT_KEY].dtype == np.uint8
    assert DeviceState.from_arrays(flat).privacy_accountant == accountant
    # States written before local DP existed have no accountant.
    old_format = DeviceState({"a.weight": np.ones((1, 2))}, {}).to_arrays()
    assert DeviceState.from_arrays(old_format).privacy_accountant is None
