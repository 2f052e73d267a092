"""The per-round record of a federated run: one line of ``rounds.jsonl``, as a typed dataclass.

The server writes one :class:`RoundRecord` per completed round; the privacy ledger, the
audit and the CLI read them back through :func:`round_record_from_dict`, which uses the
strict config loader, so a record with an unknown key, a wrong type or an unknown status
is one clear error. The privacy guarantee rests on these records: who sent an update in
which round (``joined``) and each device's accountant history (``local_privacy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from recsys_core.config import dataclass_from_dict, dataclass_to_dict
from recsys_core.errors import ConfigError, FedrecError
from recsys_core.privacy.accountant import PrivacyAccountant, ScheduleEntry
from recsys_core.privacy.names import AccountantName

#: ``aggregated``: the model moved. ``skipped``: fewer than ``server.min_devices`` updates.
#: ``discarded``: too few noise shares to release the sum. ``failed``: secure aggregation gave no sum.
RoundStatus = Literal["aggregated", "skipped", "discarded", "failed"]
NoisePlacement = Literal["central", "distributed"]


class RoundRecordError(FedrecError):
    """A round record that does not follow the schema."""


@dataclass(frozen=True)
class DeviceFailure:
    """A sampled device whose update did not enter the round, and why (``detail``: the full client error)."""

    partition: int | None
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class AccountantHistory:
    """One device's cumulative local-DP accountant, as it reported it in this round."""

    partition: int
    accountant: AccountantName
    history: tuple[ScheduleEntry, ...]

    @classmethod
    def of(cls, partition: int, accountant: PrivacyAccountant) -> AccountantHistory:
        return cls(partition, accountant.name, accountant.history)


@dataclass(frozen=True)
class UserLevelEvidence:
    """What the server can attest about a round's DP-FedAvg step, for the ledger and the audit.

    Under central noise the server measures the noise it added (``noise_std_measured``);
    under distributed noise it sees only the sum, so it attests the settings and the count.
    ``largest_update_norm`` is known only when the server sees each update (no secure aggregation).
    """

    noise_multiplier: float
    clip_norm: float
    noise_placement: NoisePlacement
    expected_devices: int
    updates: int
    min_surviving_devices: int
    largest_update_norm: float | None = None
    noise_std_measured: float | None = None
    noise_coordinates: int | None = None
    noise_std_declared: float | None = None


@dataclass(frozen=True)
class ChainLink:
    """The record's place in the run's hash chain (:mod:`recsys_core.audit.hash_chain`)."""

    previous: str
    hash: str


@dataclass(frozen=True)
class RoundRecord:
    """One completed round: who was asked, who answered, what the server did, and what it cost."""

    round: int
    sampled: int
    secure_aggregation: bool
    status: RoundStatus
    #: Why the round did not aggregate; empty when it did.
    status_reason: str = ""
    participants: int = 0
    declined: tuple[int | None, ...] = ()
    failures: tuple[DeviceFailure, ...] = ()
    #: Partitions whose update left the device this round (aggregated, rejected or discarded alike).
    joined: tuple[int, ...] = ()
    local_privacy: tuple[AccountantHistory, ...] = ()
    bytes_down: int = 0
    bytes_up: int = 0
    train_loss: float | None = None
    #: Secure aggregation: update coordinates the devices clipped to ``update_clip_range``.
    clipped_coordinates: int | None = None
    user_level: UserLevelEvidence | None = None
    validation: dict[str, float] | None = None
    evaluation_failures: int | None = None
    seconds: float = 0.0
    chain: ChainLink | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record, without its chain link (the run directory adds that)."""
        values = dataclass_to_dict(self)
        values.pop("chain")
        return values

    def validate(self) -> RoundRecord:
        """Checks what types alone cannot: positive round, counts in range, valid accountant histories."""
        if self.round < 1 or self.sampled < 0 or not 0 <= self.participants <= max(self.sampled, 0):
            raise RoundRecordError(f"round {self.round}: round must be positive and participants within "
                                   f"[0, sampled = {self.sampled}], got {self.participants}")
        if (self.status == "aggregated") == bool(self.status_reason):
            raise RoundRecordError(f"round {self.round}: status {self.status!r} with reason {self.status_reason!r}")
        for entry in self.local_privacy:
            for index, schedule in enumerate(entry.history):
                try:
                    schedule.validate()
                except ValueError as error:
                    raise RoundRecordError(f"round {self.round}: local_privacy of partition {entry.partition}, "
                                           f"history[{index}].{error}") from None
        if self.train_loss is not None and not math.isfinite(self.train_loss):
            raise RoundRecordError(f"round {self.round}: train_loss must be finite or absent, got {self.train_loss}")
        return self


def round_record_from_dict(values: dict[str, Any], where: str = "round record") -> RoundRecord:
    """The record a ``rounds.jsonl`` line holds; an error names ``where`` and the offending key."""
    if not isinstance(values, dict):
        raise RoundRecordError(f"{where}: expected a JSON object, got {type(values).__name__}")
    try:
        return dataclass_from_dict(RoundRecord, values).validate()
    except (ConfigError, RoundRecordError, TypeError, ValueError) as error:
        raise RoundRecordError(f"{where}: {error}") from None
