"""The privacy ledger of a run: what was protected, how, and every schedule needed to recompute epsilon.

A ledger is plain JSON. It records the unit of privacy and neighbouring relation, the
mechanisms and their parameters, each client's DP-SGD schedule and the rounds it
joined, and the epsilons the run reported. :func:`recompute` derives every epsilon
again from the recorded schedules alone (no data, no training), and :func:`verify`
compares them with the recorded ones, so a third party can check a run's claims.
:func:`load_ledger` validates a file and names the file and the bad field on error.

Infinite epsilons are written as the string ``"Infinity"`` so the file stays strict JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import opacus
import torch

from recsys_core.errors import DataFormatError
from recsys_core.privacy.accountant import PrivacyAccountant, ScheduleEntry, compute_epsilon
from recsys_core.privacy.names import AccountantName, NoisePlacement
from recsys_core.privacy.user_level import UserLevelEpsilon, user_level_epsilon

SCHEMA_VERSION = 1

LOCAL_UNIT_OF_PRIVACY = "one training example on one device (an interaction; a sequence for sequential models)"
LOCAL_NEIGHBOURING_RELATION = "add or remove one training example from one device's local dataset"
LOCAL_MECHANISM = ("DP-SGD (Opacus): Poisson-sampled batches, per-example gradients clipped to clip_norm, "
                   "Gaussian noise of standard deviation noise_multiplier * clip_norm added to each batch sum")
USER_UNIT_OF_PRIVACY = "one user: all interactions of one client"
USER_NEIGHBOURING_RELATION = "add or remove one user (one client) with all their data"
USER_MECHANISM = ("DP-FedAvg: each client's shared-parameter update clipped to L2 norm clip_norm, Gaussian noise "
                  "of standard deviation noise_multiplier * clip_norm added to the sum of updates")
_INFINITY = "Infinity"


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
    """Minimum, median and maximum of per-client epsilons (the full list is in the client entries)."""

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
class ClientPrivacy:
    """One client's participation and, with local DP, its device accountant's history and epsilon."""

    client_id: str
    #: Rounds in which this client's update left the device.
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
    #: The configured noise multiplier; each client's schedule records the one it actually used.
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
    min_surviving_clients: int
    num_clients: int
    clients_per_round: int
    epsilon: UserLevelEpsilon


@dataclass(frozen=True)
class PrivacyLedger:
    """Everything needed to state and to check the privacy of one run."""

    schema_version: int
    library_versions: LibraryVersions
    local: LocalPrivacyRecord | None
    user_level: UserLevelPrivacyRecord | None
    clients: tuple[ClientPrivacy, ...]

    def to_dict(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], _to_json_value(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, values: Any, source: str | Path = "ledger") -> PrivacyLedger:
        """Parses and validates; any problem is a :class:`LedgerError` naming ``source`` and the field."""
        try:
            ledger = typing.cast(PrivacyLedger, _parse(cls, values, ""))
            _validate(ledger)
        except _FieldError as error:
            raise LedgerError(source, error.field, error.message) from None
        return ledger


class LedgerError(DataFormatError):
    """A ledger file that is malformed, inconsistent, or whose epsilons do not recompute."""

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        self.field = field
        super().__init__(path, f"{field or 'ledger'}: {message}")


class _FieldError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- building ---------------------------------------------------------------------------------------------------


def client_privacy(
    client_id: str, rounds_joined: int, accountant: PrivacyAccountant | None = None, delta: float | None = None
) -> ClientPrivacy:
    """The ledger entry of one client; pass its device accountant and the local delta under local DP."""
    if accountant is None:
        return ClientPrivacy(client_id, rounds_joined, 0, (), None)
    if delta is None:
        raise ValueError("delta: needed to compute the epsilon of a client with a local accountant")
    return ClientPrivacy(client_id, rounds_joined, accountant.total_steps, accountant.history,
                         accountant.epsilon(delta))


def local_privacy_record(
    *,
    accountant: AccountantName,
    noise_multiplier: float,
    clip_norm: float,
    delta: float,
    target_epsilon: float,
    clients: Iterable[ClientPrivacy],
    unit_of_privacy: str = LOCAL_UNIT_OF_PRIVACY,
) -> LocalPrivacyRecord:
    """The local-DP section, with the epsilon summary taken from the clients' entries."""
    epsilons = [client.local_epsilon for client in clients if client.local_epsilon is not None]
    return LocalPrivacyRecord(unit_of_privacy, LOCAL_NEIGHBOURING_RELATION, LOCAL_MECHANISM, accountant,
                              noise_multiplier, clip_norm, delta, target_epsilon, EpsilonSummary.of(epsilons))


def user_level_privacy_record(
    *,
    noise_placement: NoisePlacement,
    clip_norm: float,
    min_surviving_clients: int,
    num_clients: int,
    clients_per_round: int,
    epsilon: UserLevelEpsilon,
) -> UserLevelPrivacyRecord:
    """The user-level section; ``epsilon`` comes from :func:`~recsys_core.privacy.user_level.user_level_epsilon`."""
    return UserLevelPrivacyRecord(USER_UNIT_OF_PRIVACY, USER_NEIGHBOURING_RELATION, USER_MECHANISM, noise_placement,
                                  clip_norm, min_surviving_clients, num_clients, clients_per_round, epsilon)


def build_ledger(
    *,
    clients: Iterable[ClientPrivacy],
    local: LocalPrivacyRecord | None = None,
    user_level: UserLevelPrivacyRecord | None = None,
) -> PrivacyLedger:
    """A validated ledger stamped with the installed library versions."""
    ledger = PrivacyLedger(SCHEMA_VERSION, LibraryVersions.current(), local, user_level, tuple(clients))
    try:
        _validate(ledger)
    except _FieldError as error:
        raise ValueError(str(error)) from None
    return ledger


def write_ledger(ledger: PrivacyLedger, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(ledger.to_json() + "\n", encoding="utf-8")
    return path


def load_ledger(path: str | Path) -> PrivacyLedger:
    """Reads and validates a ledger file; every problem is one :class:`LedgerError` naming the file and field."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LedgerError(path, "", "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LedgerError(path, "", f"not valid JSON: {error}") from None
    return PrivacyLedger.from_dict(values, source=path)


# --- checking ---------------------------------------------------------------------------------------------------


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
    try:
        _validate(ledger)
    except _FieldError as error:
        raise ValueError(str(error)) from None
    local_epsilons: list[float | None] = []
    cache: dict[tuple[ScheduleEntry, ...], float] = {}
    for client in ledger.clients:
        if ledger.local is None:
            local_epsilons.append(None)
            continue
        if client.local_schedule not in cache:
            cache[client.local_schedule] = compute_epsilon(client.local_schedule, ledger.local.delta,
                                                           ledger.local.accountant)
        local_epsilons.append(cache[client.local_schedule])
    local_summary = None
    if ledger.local is not None:
        local_summary = EpsilonSummary.of([value for value in local_epsilons if value is not None])
    user_level = None
    if ledger.user_level is not None:
        record, recorded = ledger.user_level, ledger.user_level.epsilon
        user_level = user_level_epsilon(
            noise_multiplier=recorded.noise_multiplier,
            rounds=recorded.rounds,
            clients_per_round=record.clients_per_round,
            num_clients=record.num_clients,
            delta=recorded.delta,
            # The participation recorded per client, not the summary figure: that is what a checker trusts.
            max_rounds_joined=max((client.rounds_joined for client in ledger.clients), default=0),
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

    for index, (client, value) in enumerate(zip(ledger.clients, recomputed.local_epsilons)):
        check(f"clients[{index}].local_epsilon", client.local_epsilon, value)
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


def _validate(ledger: PrivacyLedger) -> None:
    """Range and consistency checks that the JSON types alone do not give."""
    if ledger.schema_version != SCHEMA_VERSION:
        raise _FieldError("schema_version", f"expected {SCHEMA_VERSION}, got {ledger.schema_version}")
    if ledger.local is None and ledger.user_level is None:
        raise _FieldError("local", "a ledger needs a local or a user_level section (or both)")
    seen: set[str] = set()
    for index, client in enumerate(ledger.clients):
        field = f"clients[{index}]"
        if client.client_id in seen:
            raise _FieldError(f"{field}.client_id", f"{client.client_id!r} appears twice")
        seen.add(client.client_id)
        if client.rounds_joined < 0:
            raise _FieldError(f"{field}.rounds_joined", f"must not be negative, got {client.rounds_joined}")
        for step_index, entry in enumerate(client.local_schedule):
            try:
                entry.validate()
            except ValueError as error:
                raise _FieldError(f"{field}.local_schedule[{step_index}].{str(error).split(':')[0]}",
                                  str(error).split(": ", 1)[-1]) from None
        if client.local_steps != sum(entry.steps for entry in client.local_schedule):
            raise _FieldError(f"{field}.local_steps", f"{client.local_steps} is not the sum of the local_schedule "
                                                      f"steps ({sum(e.steps for e in client.local_schedule)})")
        if ledger.local is None and (client.local_epsilon is not None or client.local_schedule):
            raise _FieldError(f"{field}.local_epsilon", "set, but the ledger has no local section")
        if ledger.local is not None:
            if client.local_epsilon is None:
                raise _FieldError(f"{field}.local_epsilon", "missing, but the ledger has a local section")
            _check_epsilon(f"{field}.local_epsilon", client.local_epsilon)
    if ledger.local is not None:
        _validate_local(ledger.local, ledger.clients)
    if ledger.user_level is not None:
        _validate_user_level(ledger.user_level, ledger.clients)


def _check_epsilon(field: str, value: float) -> None:
    if not value >= 0:
        raise _FieldError(field, f"must be a non-negative number, got {value}")


def _check_positive(field: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise _FieldError(field, f"must be positive and finite, got {value}")


def _check_delta(field: str, value: float) -> None:
    if not 0 < value < 1:
        raise _FieldError(field, f"must be in (0, 1), got {value}")


def _validate_local(local: LocalPrivacyRecord, clients: Sequence[ClientPrivacy]) -> None:
    _check_positive("local.noise_multiplier", local.noise_multiplier)
    _check_positive("local.clip_norm", local.clip_norm)
    _check_delta("local.delta", local.delta)
    if not local.target_epsilon > 0:
        raise _FieldError("local.target_epsilon", f"must be positive, got {local.target_epsilon}")
    expected = EpsilonSummary.of([client.local_epsilon for client in clients if client.local_epsilon is not None])
    for name in ("minimum", "median", "maximum", "count"):
        if getattr(local.epsilon, name) != getattr(expected, name):
            raise _FieldError(f"local.epsilon.{name}", f"recorded {getattr(local.epsilon, name)} but the clients' "
                                                       f"local_epsilon values give {getattr(expected, name)}")


def _validate_user_level(record: UserLevelPrivacyRecord, clients: Sequence[ClientPrivacy]) -> None:
    epsilon = record.epsilon
    _check_positive("user_level.clip_norm", record.clip_norm)
    _check_positive("user_level.epsilon.noise_multiplier", epsilon.noise_multiplier)
    _check_delta("user_level.epsilon.delta", epsilon.delta)
    if record.num_clients < 1 or not 1 <= record.clients_per_round <= record.num_clients:
        raise _FieldError("user_level.clients_per_round",
                          f"must be between 1 and num_clients = {record.num_clients}, got {record.clients_per_round}")
    if len(clients) != record.num_clients:
        # Every client must be listed: an unlisted client could hide a larger rounds_joined.
        raise _FieldError("clients", f"lists {len(clients)} clients but user_level.num_clients is "
                                     f"{record.num_clients}; every client must appear")
    if not 1 <= record.min_surviving_clients <= record.clients_per_round:
        raise _FieldError("user_level.min_surviving_clients",
                          f"must be between 1 and clients_per_round = {record.clients_per_round}, "
                          f"got {record.min_surviving_clients}")
    if not math.isclose(epsilon.sampling_rate, record.clients_per_round / record.num_clients, rel_tol=1e-12):
        raise _FieldError("user_level.epsilon.sampling_rate",
                          f"recorded {epsilon.sampling_rate} but clients_per_round / num_clients is "
                          f"{record.clients_per_round / record.num_clients}")
    for index, client in enumerate(clients):
        if client.rounds_joined > epsilon.rounds:
            raise _FieldError(f"clients[{index}].rounds_joined",
                              f"{client.rounds_joined} exceeds user_level.epsilon.rounds = {epsilon.rounds}")
    most_joined = max((client.rounds_joined for client in clients), default=0)
    if epsilon.max_rounds_joined != most_joined:
        raise _FieldError("user_level.epsilon.max_rounds_joined",
                          f"recorded {epsilon.max_rounds_joined} but the clients' rounds_joined give {most_joined}")
    for name in ("with_amplification", "without_amplification", "claimed_epsilon"):
        _check_epsilon(f"user_level.epsilon.{name}", getattr(epsilon, name))
    claimed_figure = getattr(epsilon, epsilon.claimed)
    if epsilon.claimed_epsilon != claimed_figure:
        raise _FieldError("user_level.epsilon.claimed_epsilon",
                          f"{epsilon.claimed_epsilon} is not the {epsilon.claimed} figure {claimed_figure}")


# --- JSON <-> dataclasses ---------------------------------------------------------------------------------------


def _to_json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return _INFINITY
    if isinstance(value, (list, tuple)):
        return [_to_json_value(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _to_json_value(item) for key, item in value.items()}
    return value


def _parse(expected: Any, value: Any, field: str) -> Any:
    """Builds ``expected`` from JSON ``value`` strictly: every field present, no extra field, exact types."""
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        options = [option for option in typing.get_args(expected) if option is not type(None)]
        if value is None:
            return None
        return _parse(options[0], value, field)
    if value is None:
        raise _FieldError(field, "must not be null")
    if origin is Literal:
        allowed = typing.get_args(expected)
        if value not in allowed:
            raise _FieldError(field, f"{value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise _FieldError(field, f"expected a list, got {type(value).__name__}")
        item_type = typing.get_args(expected)[0]
        return tuple(_parse(item_type, item, f"{field}[{index}]") for index, item in enumerate(value))
    if dataclasses.is_dataclass(expected):
        if not isinstance(value, dict):
            raise _FieldError(field or "ledger", f"expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(expected)
        names = [item.name for item in dataclasses.fields(expected)]
        prefix = f"{field}." if field else ""
        for name in value:
            if name not in names:
                raise _FieldError(f"{prefix}{name}", "unknown field")
        for name in names:
            if name not in value:
                raise _FieldError(f"{prefix}{name}", "missing")
        return typing.cast(Any, expected)(**{name: _parse(hints[name], value[name], prefix + name) for name in names})
    if expected is float:
        if value == _INFINITY:
            return math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _FieldError(field, f"expected a number, got {value!r}")
        return float(value)
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(field, f"expected an integer, got {value!r}")
        return value
    if expected in (str, bool):
        if not isinstance(value, expected):
            raise _FieldError(field, f"expected {expected.__name__}, got {value!r}")
        return value
    raise TypeError(f"{field}: unsupported type {expected!r} in the ledger schema")


__all__ = [
    "ClientPrivacy",
    "EpsilonSummary",
    "LedgerError",
    "LibraryVersions",
    "LocalPrivacyRecord",
    "PrivacyLedger",
    "RecomputedPrivacy",
    "UserLevelPrivacyRecord",
    "build_ledger",
    "client_privacy",
    "load_ledger",
    "local_privacy_record",
    "recompute",
    "user_level_privacy_record",
    "verify",
    "write_ledger",
]
