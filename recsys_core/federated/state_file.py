"""A device's state on its own disk: two generations, each tagged with the round that wrote it.

The ClientApp writes it (``device-N.npz`` in the device's state folder) and reads it after a
restart; ``fedrec audit`` reads it to compare what each simulated device spent with the
privacy ledger. A generation is written atomically beside the previous one, so a kill
leaves at least one whole generation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys_core.errors import FedrecError
from recsys_core.federated.state import DeviceState
from recsys_core.files import DAMAGED_FILE_ERRORS, write_atomically

ROUND_TAG = "meta/written-in-round"


class DeviceStateError(FedrecError):
    """A device's own state file cannot be read."""


def device_state_file(folder: str | Path, partition_id: int) -> Path:
    return Path(folder) / f"device-{partition_id}.npz"


def previous_generation(path: Path) -> Path:
    return path.with_suffix(".previous.npz")


def write_generation(path: Path, state: DeviceState, server_round: int) -> None:
    """Writes ``state`` as the newest generation, tagged with ``server_round``; the old one becomes the previous."""
    arrays = {**state.to_arrays(), ROUND_TAG: np.array(server_round)}
    write_atomically(path, lambda stream: np.savez(stream, **arrays),  # type: ignore[arg-type]
                     keep_previous=previous_generation(path))


def read_generations(path: Path) -> list[tuple[int, DeviceState]]:
    """Every generation on disk as ``(round that wrote it, state)``, oldest first; damage is one clear error."""
    found = [(_read_generation(candidate), candidate == path)
             for candidate in (path, previous_generation(path)) if candidate.exists()]
    # A replayed round writes the same tag twice: the current file, written last, is the newer.
    return [generation for generation, _ in sorted(found, key=lambda entry: (entry[0][0], entry[1]))]


def state_for_round(path: Path, server_round: int) -> DeviceState | None:
    """The state a device starts ``server_round`` from, after a restart.

    The model state is the newest generation written before ``server_round`` (a run resumed in
    the middle of round ``r`` replays it from the state before it). The privacy accountant never
    goes back: it comes from the newest generation whatever its round, because an update written
    there may already have reached the server, and that spend stays counted.
    """
    generations = read_generations(path)
    if not generations:
        return None
    earlier = [state for written_in, state in generations if written_in < server_round]
    state = earlier[-1] if earlier else None
    newest = generations[-1][1]
    if newest.privacy_accountant is not None:
        if state is None:
            state = DeviceState({}, {})
        state = DeviceState(state.private_parameters, state.optimizer_state, newest.privacy_accountant)
    return state


def _read_generation(path: Path) -> tuple[int, DeviceState]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        return int(arrays.pop(ROUND_TAG)), DeviceState.from_arrays(arrays)
    except DAMAGED_FILE_ERRORS as error:
        raise DeviceStateError(f"{path}: this device's state file is damaged ({type(error).__name__}: {error}); "
                               "the device will not train until it is restored from a backup (deleting it would "
                               "forget the privacy budget it has spent)") from None
