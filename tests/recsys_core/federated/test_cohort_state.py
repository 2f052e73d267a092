"""The cohort engine's device-state store: exact round trips, two generations, damaged files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys_core.federated.cohort_state import CohortStates, CohortStoreError, previous_generation
from recsys_core.federated.state import DeviceState


def some_states() -> CohortStates:
    states = CohortStates()
    generator = np.random.default_rng(0)
    for partition in (4, 0, 17):
        states.put(partition, DeviceState(
            {"user_embedding.weight": generator.normal(size=(partition % 3 + 1, 5)).astype(np.float32)},
            {"0/step": np.array(3.0, dtype=np.float32), "0/exp_avg": generator.normal(size=(2, 5))},
            {"name": "rdp", "history": [[1.0, 0.1, partition + 1]]} if partition else None))
    return states


def assert_same(expected: CohortStates, measured: CohortStates) -> None:
    assert sorted(expected.states) == sorted(measured.states)
    for partition, state in expected.states.items():
        other = measured.states[partition]
        assert other.privacy_accountant == state.privacy_accountant
        for mine, theirs in ((state.private_parameters, other.private_parameters),
                             (state.optimizer_state, other.optimizer_state)):
            assert mine.keys() == theirs.keys()
            for name in mine:
                assert theirs[name].dtype == mine[name].dtype and theirs[name].shape == mine[name].shape
                np.testing.assert_array_equal(theirs[name], mine[name])


def test_packing_round_trips_every_array_shape_dtype_and_accountant() -> None:
    states = some_states()
    packed = states.to_arrays()
    # One data and one index array per state name, however many devices hold it.
    assert len(packed) == 2 * 4
    assert_same(states, CohortStates.from_arrays(packed))
    assert states.nbytes() == sum(v.nbytes for s in states.states.values() for v in s.to_arrays().values())


def test_a_device_with_nothing_to_remember_costs_nothing() -> None:
    states = some_states()
    states.put(4, DeviceState({}, {}))
    assert states.get(4) is None and len(states) == 2


def test_save_keeps_two_generations_and_load_picks_the_round(tmp_path: Path) -> None:
    path = tmp_path / "cohort-states.npz"
    older, newer = some_states(), CohortStates()
    older.save(path, 5)
    newer.save(path, 6)
    assert_same(older, CohortStates.load(path, 5))
    assert len(CohortStates.load(path, 6)) == 0
    with pytest.raises(CohortStoreError, match=r"no device states for round 7 \(found rounds \[6, 5\]\)"):
        CohortStates.load(path, 7)


def test_a_damaged_store_is_one_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cohort-states.npz"
    some_states().save(path, 1)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CohortStoreError, match="cohort-states.npz: the devices' state file is unreadable"):
        CohortStates.load(path, 1)
    packed = some_states().to_arrays()
    packed["index/private/user_embedding.weight"][0, 1] = 10**6
    with pytest.raises(CohortStoreError, match="points outside its data"):
        CohortStates.from_arrays(packed, str(path))
    np.savez(previous_generation(path), x=np.zeros(1))
    path.unlink()
    with pytest.raises(CohortStoreError, match="not a cohort state file"):
        CohortStates.load(path, 1)
