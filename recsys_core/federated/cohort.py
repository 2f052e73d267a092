"""A round's sampled devices run in one process: the device side of the cohort engine.

Each device runs :func:`~recsys_core.federated.device.train_on_device` (or, for
evaluation, :func:`~recsys_core.federated.device.evaluate_on_device`) on its own rows
with its own state, exactly as a Flower node does; there is no framework between the
devices and the server. A device's failure is its own: it is caught, kept with its
traceback, and the other devices go on, as a Flower node's error reply does.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recsys_core.federated.cohort_state import CohortStates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData
from recsys_core.federated.device import evaluate_on_device, train_on_device
from recsys_core.federated.state import Arrays, TrainOutcome
from recsys_core.metrics import MetricSums

#: Called after each device with (exchange: "train", "valid" or "test"; devices done; devices in it).
DeviceProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DeviceError:
    """A device that raised instead of replying: the exception's one line and its traceback."""

    reason: str
    detail: str

    @classmethod
    def current(cls, error: Exception) -> DeviceError:
        return cls(f"{type(error).__name__}: {error}", traceback.format_exc())


def train_cohort(config: FederatedConfig, data: FederatedData, shared: Arrays, states: CohortStates,
                 partitions: Sequence[int], server_round: int,
                 on_device: DeviceProgress | None = None) -> dict[int, TrainOutcome | DeviceError]:
    """One round of local training on every partition in ``partitions``; their states are updated in place."""
    results: dict[int, TrainOutcome | DeviceError] = {}
    for done, partition in enumerate(partitions, start=1):
        try:
            outcome = train_on_device(config, data.device_split(partition), shared, states.get(partition),
                                      server_round, partition)
        except Exception as error:  # a device's failure is recorded, as a node's error reply is
            results[partition] = DeviceError.current(error)
        else:
            states.put(partition, outcome.device_state)
            results[partition] = outcome
        if on_device is not None:
            on_device("train", done, len(partitions))
    return results


def evaluate_cohort(config: FederatedConfig, data: FederatedData, shared: Arrays, states: CohortStates,
                    partitions: Sequence[int], part: str,
                    on_device: DeviceProgress | None = None) -> dict[int, MetricSums | DeviceError]:
    """Each device ranks its own held-out items (``valid`` or ``test``) and returns its metric sums."""
    results: dict[int, MetricSums | DeviceError] = {}
    for done, partition in enumerate(partitions, start=1):
        try:
            results[partition] = evaluate_on_device(config, data.device_split(partition), shared,
                                                    states.get(partition), part, partition)
        except Exception as error:  # as above
            results[partition] = DeviceError.current(error)
        if on_device is not None:
            on_device(part, done, len(partitions))
    return results
