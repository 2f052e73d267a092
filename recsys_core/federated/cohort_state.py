"""Every simulated device's state in one place: what the cohort engine keeps between rounds.

A device keeps a :class:`~recsys_core.federated.state.DeviceState` (private parameters,
their optimiser state, its privacy accountant). Under the cohort engine the devices live
in one process, so their states live in one :class:`CohortStates`: a device costs its
state's arrays and nothing else, and a device with no state (a model with no private
parameters, no local DP) costs nothing.

On disk the states are one file, written with the server's checkpoint: arrays of the
same name are concatenated across devices and indexed by ``(partition, offset, shape)``,
so a store of 35,000 devices is a handful of arrays, not 100,000 zip entries. The file
keeps two generations tagged with their round, so a run killed between writing the
states and writing the checkpoint resumes from the generation that matches the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys_core.errors import FedrecError
from recsys_core.federated.state import Arrays, DeviceState
from recsys_core.federated.state_file import previous_generation
from recsys_core.files import DAMAGED_FILE_ERRORS, write_atomically

STORE_FORMAT = 1
ROUND_KEY = "meta/completed-round"
FORMAT_KEY = "meta/format"
MAX_DIMS = 4


__all__ = ["COHORT_STATES_FILE", "CohortStates", "CohortStoreError", "previous_generation"]

#: The cohort engine's one file of every device's state, in the run's devices/ folder.
COHORT_STATES_FILE = "cohort-states.npz"


class CohortStoreError(FedrecError):
    """The cohort engine's device-state file is missing, damaged or from another round."""


class CohortStates:
    """The states of every device that keeps one, by partition."""

    def __init__(self, states: dict[int, DeviceState] | None = None) -> None:
        self.states: dict[int, DeviceState] = dict(states or {})

    def get(self, partition: int) -> DeviceState | None:
        return self.states.get(partition)

    def put(self, partition: int, state: DeviceState) -> None:
        """Keeps ``state``; an empty state is dropped (the device has nothing to remember)."""
        if state.is_empty:
            self.states.pop(partition, None)
        else:
            self.states[partition] = state

    def __len__(self) -> int:
        return len(self.states)

    def nbytes(self) -> int:
        """The bytes of every array the devices keep (their private state, the memory they cost)."""
        return sum(value.nbytes for state in self.states.values() for value in state.to_arrays().values())

    def to_arrays(self) -> Arrays:
        """Packs the states: ``data/NAME`` (every device's NAME, raveled and concatenated) and ``index/NAME``
        (one row per device: partition, offset, number of dimensions, then the shape padded with 0)."""
        grouped: dict[str, list[tuple[int, np.ndarray]]] = {}
        for partition in sorted(self.states):
            for name, value in self.states[partition].to_arrays().items():
                grouped.setdefault(name, []).append((partition, np.asarray(value)))
        packed: Arrays = {}
        for name, entries in grouped.items():
            if any(value.ndim > MAX_DIMS for _, value in entries):
                raise ValueError(f"device state {name!r} has more than {MAX_DIMS} dimensions")
            index = np.zeros((len(entries), 3 + MAX_DIMS), dtype=np.int64)
            offset = 0
            for row, (partition, value) in enumerate(entries):
                index[row, :3] = (partition, offset, value.ndim)
                index[row, 3:3 + value.ndim] = value.shape
                offset += value.size
            packed[f"index/{name}"] = index
            packed[f"data/{name}"] = np.concatenate([value.ravel() for _, value in entries])
        return packed

    @classmethod
    def from_arrays(cls, packed: Arrays, where: str = "the cohort store") -> CohortStates:
        """Unpacks :meth:`to_arrays`; a damaged index is one :class:`CohortStoreError` naming ``where``."""
        flat: dict[int, Arrays] = {}
        for key in packed:
            if not key.startswith("index/"):
                continue
            name = key.removeprefix("index/")
            index, data = packed[key], packed.get(f"data/{name}")
            if data is None or index.ndim != 2 or index.shape[1] != 3 + MAX_DIMS:
                raise CohortStoreError(f"{where}: the arrays of {name!r} are damaged")
            for partition, offset, ndim, *dims in index.tolist():
                shape = tuple(dims[:ndim])
                size = int(np.prod(shape)) if shape else 1
                if not (0 <= ndim <= MAX_DIMS and offset >= 0 and offset + size <= data.size and partition >= 0):
                    raise CohortStoreError(f"{where}: the index of {name!r} points outside its data")
                flat.setdefault(partition, {})[name] = data[offset:offset + size].reshape(shape).copy()
        return cls({partition: DeviceState.from_arrays(arrays) for partition, arrays in flat.items()})

    def save(self, path: Path, completed_round: int) -> None:
        """Writes the states atomically, tagged with the round; the previous generation is kept beside it."""
        arrays = {**self.to_arrays(), ROUND_KEY: np.array(completed_round), FORMAT_KEY: np.array(STORE_FORMAT)}
        write_atomically(path, lambda stream: np.savez(stream, **arrays),  # type: ignore[arg-type]
                         keep_previous=previous_generation(path))

    @classmethod
    def load(cls, path: Path, completed_round: int) -> CohortStates:
        """The generation written after ``completed_round``; :class:`CohortStoreError` when neither has it."""
        found = []
        for tag, arrays, candidate in _generations(path):
            found.append(tag)
            if tag == completed_round:
                return cls.from_arrays(arrays, str(candidate))
        raise CohortStoreError(
            f"{path}: no device states for round {completed_round} (found rounds {found or 'none'}); the devices' "
            "private state and privacy accountants cannot be restored, so the run cannot resume")

    @classmethod
    def load_newest(cls, path: Path) -> CohortStates:
        """The newest generation on disk (what the devices last kept); empty when there is none."""
        generations = _generations(path)
        if not generations:
            return cls()
        # The current file wins a tie with its previous generation: it was written last.
        _, arrays, source = max(generations, key=lambda generation: generation[0])
        return cls.from_arrays(arrays, str(source))


def _generations(path: Path) -> list[tuple[int, Arrays, Path]]:
    """Each generation on disk: ``(round tag, packed arrays, file)``."""
    found = []
    for candidate in (path, previous_generation(path)):
        if not candidate.exists():
            continue
        try:
            with np.load(candidate, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except DAMAGED_FILE_ERRORS as error:
            raise CohortStoreError(f"{candidate}: the devices' state file is unreadable ({error})") from None
        if int(arrays.get(FORMAT_KEY, -1)) != STORE_FORMAT or ROUND_KEY not in arrays:
            raise CohortStoreError(f"{candidate}: not a cohort state file of format {STORE_FORMAT}")
        found.append((int(arrays[ROUND_KEY]), arrays, candidate))
    return found
