"""Building a run's ledger from its accountants and settings, validated and stamped with the library versions."""

from __future__ import annotations

from collections.abc import Iterable

from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.privacy.ledger.schema import (
    LOCAL_MECHANISM,
    LOCAL_NEIGHBOURING_RELATION,
    LOCAL_UNIT_OF_PRIVACY,
    SCHEMA_VERSION,
    USER_MECHANISM,
    USER_NEIGHBOURING_RELATION,
    USER_UNIT_OF_PRIVACY,
    DevicePrivacy,
    EpsilonSummary,
    LibraryVersions,
    LocalPrivacyRecord,
    PrivacyLedger,
    UserLevelPrivacyRecord,
)
from recsys_core.privacy.ledger.verification import validate
from recsys_core.privacy.names import AccountantName, NoisePlacement
from recsys_core.privacy.user_level import UserLevelEpsilon


def device_privacy(
    device_id: str, rounds_joined: int, accountant: PrivacyAccountant | None = None, delta: float | None = None
) -> DevicePrivacy:
    """The ledger entry of one device; pass its device accountant and the local delta under local DP."""
    if accountant is None:
        return DevicePrivacy(device_id, rounds_joined, 0, (), None)
    if delta is None:
        raise ValueError("delta: needed to compute the epsilon of a device with a local accountant")
    return DevicePrivacy(device_id, rounds_joined, accountant.total_steps, accountant.history,
                         accountant.epsilon(delta))


def local_privacy_record(
    *,
    accountant: AccountantName,
    noise_multiplier: float,
    clip_norm: float,
    delta: float,
    target_epsilon: float,
    devices: Iterable[DevicePrivacy],
    unit_of_privacy: str = LOCAL_UNIT_OF_PRIVACY,
) -> LocalPrivacyRecord:
    """The local-DP section, with the epsilon summary taken from the devices' entries."""
    epsilons = [device.local_epsilon for device in devices if device.local_epsilon is not None]
    return LocalPrivacyRecord(unit_of_privacy, LOCAL_NEIGHBOURING_RELATION, LOCAL_MECHANISM, accountant,
                              noise_multiplier, clip_norm, delta, target_epsilon, EpsilonSummary.of(epsilons))


def user_level_privacy_record(
    *,
    noise_placement: NoisePlacement,
    clip_norm: float,
    min_surviving_devices: int,
    num_devices: int,
    devices_per_round: int,
    epsilon: UserLevelEpsilon,
) -> UserLevelPrivacyRecord:
    """The user-level section; ``epsilon`` comes from :func:`~recsys_core.privacy.user_level.user_level_epsilon`."""
    return UserLevelPrivacyRecord(USER_UNIT_OF_PRIVACY, USER_NEIGHBOURING_RELATION, USER_MECHANISM, noise_placement,
                                  clip_norm, min_surviving_devices, num_devices, devices_per_round, epsilon)


def build_ledger(
    *,
    devices: Iterable[DevicePrivacy],
    local: LocalPrivacyRecord | None = None,
    user_level: UserLevelPrivacyRecord | None = None,
) -> PrivacyLedger:
    """A validated ledger stamped with the installed library versions."""
    ledger = PrivacyLedger(SCHEMA_VERSION, LibraryVersions.current(), local, user_level, tuple(devices))
    validate(ledger)
    return ledger
