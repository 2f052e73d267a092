"""What a privacy ledger holds: the sections and entries of the file, and the error a bad one raises."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import opacus
import torch

from recsys_core.errors import DataFormatError
from recsys_core.privacy.accountant import ScheduleEntry
from recsys_core.privacy.names import AccountantName, NoisePlacement
from recsys_core.privacy.user_level import UserLevelEpsilon

SCHEMA_VERSION = 2

LOCAL_UNIT_OF_PRIVACY = "one training example on one device (an interaction; a sequence for sequential models)"
LOCAL_NEIGHBOURING_RELATION = "add or remove one training example from one device's local dataset"
LOCAL_MECHANISM = ("DP-SGD (Opacus): Poisson-sampled batches, per-example gradients clipped to clip_norm, "
                   "Gaussian noise of standard deviation noise_multiplier * clip_norm added to each batch sum")
USER_UNIT_OF_PRIVACY = "one user: all interactions of one device"
USER_NEIGHBOURING_RELATION = "add or remove one user (one device) with all their data"
USER_MECHANISM = ("DP-FedAvg: each device's shared-parameter update clipped to L2 norm clip_norm, Gaussian noise "
                  "of standard deviation noise_multiplier * clip_norm added to the sum of updates")


@dataclass(frozen=True)
class LibraryVersions:
    """Versions of the libraries whose code computed the noise and the epsilons."""

    opacus: str
    torch: str
    numpy: str

    @classmethod
    def current(cls) -> LibraryVersions:
        return cls(opacus=opacus.__version__, torch=torch.__version__, numpy=np.__version__)


@dataclass(frozen=True)
class EpsilonSummary:
    """Minimum, median and maximum of per-client epsilons (the full list is in the device entries)."""

    minimum: float
    median: float
    maximum: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> EpsilonSummary:
        if not values:
            return cls(0.0, 0.0, 0.0, 0)
        return cls(float(min(values)), float(statistics.median(values)), float(max(values)), len(values))


@dataclass(frozen=True)
class DevicePrivacy:
    """One device's participation and, with local DP, its device accountant's history and epsilon."""

    device_id: str
    #: Rounds in which this device's update left the device.
    rounds_joined: int
    #: DP-SGD steps the device took in total (the sum of ``local_schedule`` steps; 0 without local DP).
    local_steps: int
    #: The device accountant's history: every (noise multiplier, sampling rate, steps) it spent.
    local_schedule: tuple[ScheduleEntry, ...]
    #: Interaction-level epsilon of this device at the local delta; null without local DP.
    local_epsilon: float | None


@dataclass(frozen=True)
class LocalPrivacyRecord:
    """Interaction-level DP-SGD on every device."""

    unit_of_privacy: str
    neighbouring_relation: str
    mechanism: str
    accountant: AccountantName
    #: The configured noise multiplier; each device's schedule records the one it actually used.
    noise_multiplier: float
    clip_norm: float
    delta: float
    #: Each device's budget; a device declines rounds that would take it above this.
    target_epsilon: float
    epsilon: EpsilonSummary


@dataclass(frozen=True)
class UserLevelPrivacyRecord:
    """User-level DP-FedAvg over the whole run."""

    unit_of_privacy: str
    neighbouring_relation: str
    mechanism: str
    noise_placement: NoisePlacement
    clip_norm: float
    #: Distributed noise: shares are sized so that this many survivors carry the full noise (1 if central).
    min_surviving_devices: int
    num_devices: int
    devices_per_round: int
    epsilon: UserLevelEpsilon


@dataclass(frozen=True)
class PrivacyLedger:
    """Everything needed to state and to check the privacy of one run."""

    schema_version: int
    library_versions: LibraryVersions
    local: LocalPrivacyRecord | None
    user_level: UserLevelPrivacyRecord | None
    devices: tuple[DevicePrivacy, ...]

    # The file format lives in .io, which builds on this module, hence the imports at call time.

    def to_dict(self) -> dict[str, Any]:
        """The ledger as strict-JSON values (see :func:`~recsys_core.privacy.ledger.io.ledger_to_dict`)."""
        from recsys_core.privacy.ledger.io import ledger_to_dict

        return ledger_to_dict(self)

    def to_json(self) -> str:
        """The ledger file's text, without the final newline."""
        from recsys_core.privacy.ledger.io import ledger_to_json

        return ledger_to_json(self)

    @classmethod
    def from_dict(cls, values: Any, source: str | Path = "ledger") -> PrivacyLedger:
        """Parses and validates; any problem is a :class:`LedgerError` naming ``source`` and the field."""
        from recsys_core.privacy.ledger.io import ledger_from_dict

        return ledger_from_dict(values, source)


class LedgerError(DataFormatError):
    """A ledger file that is malformed, inconsistent, or whose epsilons do not recompute."""

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        self.field = field
        super().__init__(path, f"{field or 'ledger'}: {message}")


class FieldError(ValueError):
    """A problem with one field of a ledger, before it is known which file (if any) the ledger came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
