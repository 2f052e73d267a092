"""Checking a ledger: its internal consistency, and every epsilon recomputed from its schedules alone.

:func:`recompute` derives every epsilon again from the recorded schedules (no data, no
training), and :func:`verify` compares them with the recorded ones, so a third party
can check a run's claims. :func:`validate` holds what the JSON types alone do not:
ranges, sums, and that the sections agree with the device entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recsys_core.privacy.accountant import ScheduleEntry, compute_epsilon
from recsys_core.privacy.ledger.schema import (
    SCHEMA_VERSION,
    DevicePrivacy,
    EpsilonSummary,
    FieldError,
    LedgerError,
    LocalPrivacyRecord,
    PrivacyLedger,
    UserLevelPrivacyRecord,
)
from recsys_core.privacy.user_level import UserLevelEpsilon, user_level_epsilon


@dataclass(frozen=True)
class RecomputedPrivacy:
    """Every epsilon of a ledger, derived again from its schedules."""

    local_epsilons: tuple[float | None, ...]
    local_summary: EpsilonSummary | None
    user_level: UserLevelEpsilon | None


def recompute(ledger: PrivacyLedger) -> RecomputedPrivacy:
    """Recomputes every epsilon from the recorded schedules and participation alone.

    Clients with identical schedules are computed once (PRV takes ~0.1 s per schedule).
    """
    validate(ledger)
    local_epsilons: list[float | None] = []
    cache: dict[tuple[ScheduleEntry, ...], float] = {}
    for device in ledger.devices:
        if ledger.local is None:
            local_epsilons.append(None)
            continue
        if device.local_schedule not in cache:
            cache[device.local_schedule] = compute_epsilon(device.local_schedule, ledger.local.delta,
                                                           ledger.local.accountant)
        local_epsilons.append(cache[device.local_schedule])
    local_summary = None
    if ledger.local is not None:
        local_summary = EpsilonSummary.of([value for value in local_epsilons if value is not None])
    user_level = None
    if ledger.user_level is not None:
        record, recorded = ledger.user_level, ledger.user_level.epsilon
        user_level = user_level_epsilon(
            noise_multiplier=recorded.noise_multiplier,
            rounds=recorded.rounds,
            devices_per_round=record.devices_per_round,
            num_devices=record.num_devices,
            delta=recorded.delta,
            # The participation recorded per device, not the summary figure: that is what a checker trusts.
            max_rounds_joined=max((device.rounds_joined for device in ledger.devices), default=0),
            accountant=recorded.accountant,
            sampling=recorded.sampling,
            participation_hidden=recorded.participation_hidden,
        )
    return RecomputedPrivacy(tuple(local_epsilons), local_summary, user_level)


def verify(ledger: PrivacyLedger, relative_tolerance: float = 1e-6, source: str | Path = "ledger") -> RecomputedPrivacy:
    """Recomputes every epsilon and raises :class:`LedgerError` on the first recorded value that differs.

    A small tolerance allows for other library versions; a recorded epsilon below the
    recomputed one is an under-report and always fails beyond it.
    """
    recomputed = recompute(ledger)

    def check(field: str, recorded: float | None, value: float | None) -> None:
        if recorded == value:
            return
        if recorded is None or value is None or not math.isclose(recorded, value, rel_tol=relative_tolerance):
            raise LedgerError(source, field, f"recorded {recorded} but the schedule gives {value}")

    for index, (device, value) in enumerate(zip(ledger.devices, recomputed.local_epsilons)):
        check(f"devices[{index}].local_epsilon", device.local_epsilon, value)
    if ledger.local is not None and recomputed.local_summary is not None:
        for name in ("minimum", "median", "maximum"):
            check(f"local.epsilon.{name}", getattr(ledger.local.epsilon, name),
                  getattr(recomputed.local_summary, name))
    if ledger.user_level is not None and recomputed.user_level is not None:
        recorded_epsilon, recomputed_epsilon = ledger.user_level.epsilon, recomputed.user_level
        for name in ("with_amplification", "without_amplification", "claimed_epsilon"):
            check(f"user_level.epsilon.{name}", getattr(recorded_epsilon, name),
                  getattr(recomputed_epsilon, name))
        if recorded_epsilon.claimed != recomputed_epsilon.claimed:
            raise LedgerError(source, "user_level.epsilon.claimed",
                              f"recorded {recorded_epsilon.claimed!r} but the stated assumptions allow only "
                              f"{recomputed_epsilon.claimed!r}")
    return recomputed


def validate(ledger: PrivacyLedger) -> None:
    """Range and consistency checks that the JSON types alone do not give; a problem is a :class:`FieldError`."""
    if ledger.schema_version != SCHEMA_VERSION:
        raise FieldError("schema_version", f"expected {SCHEMA_VERSION}, got {ledger.schema_version}")
    if ledger.local is None and ledger.user_level is None:
        raise FieldError("local", "a ledger needs a local or a user_level section (or both)")
    seen: set[str] = set()
    for index, device in enumerate(ledger.devices):
        field = f"devices[{index}]"
        if device.device_id in seen:
            raise FieldError(f"{field}.device_id", f"{device.device_id!r} appears twice")
        seen.add(device.device_id)
        if device.rounds_joined < 0:
            raise FieldError(f"{field}.rounds_joined", f"must not be negative, got {device.rounds_joined}")
        for step_index, entry in enumerate(device.local_schedule):
            try:
                entry.validate()
            except ValueError as error:
                raise FieldError(f"{field}.local_schedule[{step_index}].{str(error).split(':')[0]}",
                                  str(error).split(": ", 1)[-1]) from None
        if device.local_steps != sum(entry.steps for entry in device.local_schedule):
            raise FieldError(f"{field}.local_steps", f"{device.local_steps} is not the sum of the local_schedule "
                                                      f"steps ({sum(e.steps for e in device.local_schedule)})")
        if ledger.local is None and (device.local_epsilon is not None or device.local_schedule):
            raise FieldError(f"{field}.local_epsilon", "set, but the ledger has no local section")
        if ledger.local is not None:
            if device.local_epsilon is None:
                raise FieldError(f"{field}.local_epsilon", "missing, but the ledger has a local section")
            _check_epsilon(f"{field}.local_epsilon", device.local_epsilon)
    if ledger.local is not None:
        _validate_local(ledger.local, ledger.devices)
    if ledger.user_level is not None:
        _validate_user_level(ledger.user_level, ledger.devices)


def _check_epsilon(field: str, value: float) -> None:
    if not value >= 0:
        raise FieldError(field, f"must be a non-negative number, got {value}")


def _check_positive(field: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise FieldError(field, f"must be positive and finite, got {value}")


def _check_delta(field: str, value: float) -> None:
    if not 0 < value < 1:
        raise FieldError(field, f"must be in (0, 1), got {value}")


def _validate_local(local: LocalPrivacyRecord, devices: Sequence[DevicePrivacy]) -> None:
    _check_positive("local.noise_multiplier", local.noise_multiplier)
    _check_positive("local.clip_norm", local.clip_norm)
    _check_delta("local.delta", local.delta)
    if not local.target_epsilon > 0:
        raise FieldError("local.target_epsilon", f"must be positive, got {local.target_epsilon}")
    expected = EpsilonSummary.of([device.local_epsilon for device in devices if device.local_epsilon is not None])
    for name in ("minimum", "median", "maximum", "count"):
        if getattr(local.epsilon, name) != getattr(expected, name):
            raise FieldError(f"local.epsilon.{name}", f"recorded {getattr(local.epsilon, name)} but the devices' "
                                                       f"local_epsilon values give {getattr(expected, name)}")


def _validate_user_level(record: UserLevelPrivacyRecord, devices: Sequence[DevicePrivacy]) -> None:
    epsilon = record.epsilon
    _check_positive("user_level.clip_norm", record.clip_norm)
    _check_positive("user_level.epsilon.noise_multiplier", epsilon.noise_multiplier)
    _check_delta("user_level.epsilon.delta", epsilon.delta)
    if record.num_devices < 1 or not 1 <= record.devices_per_round <= record.num_devices:
        raise FieldError("user_level.devices_per_round",
                          f"must be between 1 and num_devices = {record.num_devices}, got {record.devices_per_round}")
    if len(devices) != record.num_devices:
        # Every device must be listed: an unlisted device could hide a larger rounds_joined.
        raise FieldError("devices", f"lists {len(devices)} devices but user_level.num_devices is "
                                     f"{record.num_devices}; every device must appear")
    if not 1 <= record.min_surviving_devices <= record.devices_per_round:
        raise FieldError("user_level.min_surviving_devices",
                          f"must be between 1 and devices_per_round = {record.devices_per_round}, "
                          f"got {record.min_surviving_devices}")
    if not math.isclose(epsilon.sampling_rate, record.devices_per_round / record.num_devices, rel_tol=1e-12):
        raise FieldError("user_level.epsilon.sampling_rate",
                          f"recorded {epsilon.sampling_rate} but devices_per_round / num_devices is "
                          f"{record.devices_per_round / record.num_devices}")
    for index, device in enumerate(devices):
        if device.rounds_joined > epsilon.rounds:
            raise FieldError(f"devices[{index}].rounds_joined",
                              f"{device.rounds_joined} exceeds user_level.epsilon.rounds = {epsilon.rounds}")
    most_joined = max((device.rounds_joined for device in devices), default=0)
    if epsilon.max_rounds_joined != most_joined:
        raise FieldError("user_level.epsilon.max_rounds_joined",
                          f"recorded {epsilon.max_rounds_joined} but the devices' rounds_joined give {most_joined}")
    for name in ("with_amplification", "without_amplification", "claimed_epsilon"):
        _check_epsilon(f"user_level.epsilon.{name}", getattr(epsilon, name))
    claimed_figure = getattr(epsilon, epsilon.claimed)
    if epsilon.claimed_epsilon != claimed_figure:
        raise FieldError("user_level.epsilon.claimed_epsilon",
                          f"{epsilon.claimed_epsilon} is not the {epsilon.claimed} figure {claimed_figure}")
