"""What a device keeps between rounds and what it sends back, and how both become flat arrays.

A device keeps a :class:`DeviceState` (its private parameters, such as the user
embedding, their optimiser state and, under local DP, its privacy accountant); only the
*shared* parameters of a :class:`TrainOutcome` go back to the server. Everything is
stored as ``name -> numpy array`` so that Flower's ``Context.state`` or a file can hold it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Arrays = dict[str, np.ndarray]

#: Key of the privacy accountant's JSON state (UTF-8 bytes as uint8) in :meth:`DeviceState.to_arrays`.
ACCOUNTANT_KEY = "privacy/accountant"


@dataclass
class DeviceState:
    """What a device keeps between rounds: private parameters, their optimiser state and,
    under local DP, its privacy accountant (:meth:`PrivacyAccountant.to_dict`).

    The accountant must never be lost or reset: its history is what the device has spent.
    """

    private_parameters: Arrays
    optimizer_state: Arrays
    privacy_accountant: dict[str, Any] | None = None

    @property
    def is_empty(self) -> bool:
        """Nothing to remember: no private parameters, no optimiser state, no accountant."""
        return not self.private_parameters and not self.optimizer_state and self.privacy_accountant is None

    def to_arrays(self) -> Arrays:
        """Flat arrays for storage (Flower ``Context.state`` or a file)."""
        flat = {f"private/{name}": value for name, value in self.private_parameters.items()}
        flat.update({f"optimizer/{name}": value for name, value in self.optimizer_state.items()})
        if self.privacy_accountant is not None:
            # Array stores hold numbers only: the JSON travels as its bytes.
            text = json.dumps(self.privacy_accountant, sort_keys=True)
            flat[ACCOUNTANT_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        return flat

    @classmethod
    def from_arrays(cls, flat: Arrays) -> DeviceState:
        private = {k.removeprefix("private/"): v for k, v in flat.items() if k.startswith("private/")}
        optimizer = {k.removeprefix("optimizer/"): v for k, v in flat.items() if k.startswith("optimizer/")}
        accountant = None
        if ACCOUNTANT_KEY in flat:
            accountant = json.loads(np.asarray(flat[ACCOUNTANT_KEY], dtype=np.uint8).tobytes().decode("utf-8"))
        return cls(private, optimizer, accountant)


@dataclass
class TrainOutcome:
    """A device's reply to a training message.

    ``declined`` is True when the device did not train (local DP: the round would exceed
    its privacy budget); then ``num_examples`` is 0, the shared parameters are the ones
    received and ``decline_reason`` says why. ``privacy_epsilon`` is the device's local-DP
    epsilon spent so far (at ``privacy.local.target_delta``), None without local DP.
    """

    shared_parameters: Arrays
    device_state: DeviceState
    num_examples: int
    train_loss: float
    declined: bool = False
    decline_reason: str = ""
    privacy_epsilon: float | None = None
    #: Under user-level DP, what the device sends instead of its parameters: its update
    #: (trained minus received), clipped and, with distributed noise, noised.
    clipped_update: Arrays | None = None

    @property
    def payload(self) -> Arrays:
        """The arrays that leave the device."""
        return self.shared_parameters if self.clipped_update is None else self.clipped_update


def state_to_arrays(state: dict[str, torch.Tensor]) -> Arrays:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in state.items()}


def optimizer_state_to_arrays(optimizer: torch.optim.Optimizer) -> Arrays:
    """The optimiser's per-parameter state, keyed ``"{index in the optimiser}/{key}"``."""
    arrays: Arrays = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            arrays[f"{index}/{key}"] = np.asarray(value.detach().cpu().numpy() if torch.is_tensor(value) else value)
    return arrays


def optimizer_state_from_arrays(arrays: Arrays) -> dict[int, dict[str, torch.Tensor]]:
    """The ``"state"`` of an optimiser's ``state_dict`` back from :func:`optimizer_state_to_arrays`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in arrays.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = torch.from_numpy(np.array(value))
    return state
