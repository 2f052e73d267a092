"""Privacy accounting: one facade over Opacus's RDP and PRV accountants, with a JSON-safe history.

The history is a list of ``(noise_multiplier, sampling_rate, steps)`` entries of a
(Poisson-)subsampled Gaussian mechanism, the same list Opacus keeps in
``IAccountant.history``. Epsilon is a function of that list alone, so keeping the list
is keeping the privacy state: a device that loses it (a restart, a fresh Opacus
``PrivacyEngine``) under-reports what it has spent. Every epsilon here is computed by
Opacus itself on a fresh accountant loaded with the history.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from recsys_core.privacy.names import ACCOUNTANT_NAMES, AccountantName

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

# Opacus is imported where epsilon is computed, not here: the wire format and the round records
# parse accountant histories on every device and server, and importing Opacus costs seconds.

#: Version of the dict written by :meth:`PrivacyAccountant.to_dict`.
STATE_FORMAT = 1


@dataclass(frozen=True)
class ScheduleEntry:
    """``steps`` consecutive steps of a Gaussian mechanism with noise ``noise_multiplier``
    (standard deviation over sensitivity) on a sample drawn with probability ``sampling_rate``."""

    noise_multiplier: float
    sampling_rate: float
    steps: int

    def validate(self) -> ScheduleEntry:
        # NaN fails every comparison, so the checks are written as "not (good)".
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier: must be positive and finite, got {self.noise_multiplier}")
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"sampling_rate: must be in (0, 1], got {self.sampling_rate}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps: must be a non-negative integer, got {self.steps!r}")
        return self

    def to_list(self) -> list[float | int]:
        return [self.noise_multiplier, self.sampling_rate, self.steps]


def check_delta(delta: float) -> None:
    """Epsilon is only defined for ``0 < delta < 1``."""
    if not 0 < delta < 1:
        raise ValueError(f"delta: must be in (0, 1), got {delta}")


def _opacus_accountant(name: str) -> IAccountant:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ValueError(f"accountant: {name!r} is not one of {', '.join(map(repr, ACCOUNTANT_NAMES))}")


def _merged(entries: Iterable[ScheduleEntry]) -> list[ScheduleEntry]:
    """Joins neighbours with the same mechanism and drops empty entries.

    Merging is exact (epsilon depends on the total steps per mechanism), and it keeps
    the history of a long run as short as the number of distinct settings, as Opacus does.
    """
    merged: list[ScheduleEntry] = []
    for entry in entries:
        entry.validate()
        if entry.steps == 0:
            continue
        last = merged[-1] if merged else None
        if last and (last.noise_multiplier, last.sampling_rate) == (entry.noise_multiplier, entry.sampling_rate):
            merged[-1] = ScheduleEntry(last.noise_multiplier, last.sampling_rate, last.steps + entry.steps)
        else:
            merged.append(entry)
    return merged


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(noise_multiplier: float, sampling_rate: float) -> np.ndarray:
    """Opacus's RDP curve of one step at its default orders (read-only: it is shared by the cache).

    It depends on (sigma, q) only and costs ~0.1 s for q < 1; a device asks for its
    budget every round and a ledger check asks for every client, mostly with the same
    few (sigma, q), so it is computed once per pair.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    curve = rdp_analysis.compute_rdp(
        q=sampling_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    curve = np.array(curve, dtype=np.float64)
    curve.flags.writeable = False
    return curve


def _rdp_epsilon(entries: Sequence[ScheduleEntry], delta: float) -> float:
    # The same arithmetic as RDPAccountant.get_privacy_spent (per-step curve times steps, summed in
    # history order, then Opacus's conversion), so the result is bit-for-bit Opacus's.
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum(_rdp_of_one_step(entry.noise_multiplier, entry.sampling_rate) * entry.steps for entry in entries)
    epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


def compute_epsilon(history: Sequence[ScheduleEntry], delta: float, accountant: AccountantName = "rdp") -> float:
    """Epsilon at ``delta`` spent by ``history`` under the named Opacus accountant.

    RDP uses Opacus's default orders; PRV returns its upper bound (``eps_error`` 0.01), never the estimate.
    """
    check_delta(delta)
    opacus_accountant = _opacus_accountant(accountant)
    entries = _merged(history)
    if not entries:
        # Opacus's PRV accountant fails on an empty history; nothing released, nothing spent.
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(entries, delta)
    opacus_accountant.history = [(entry.noise_multiplier, entry.sampling_rate, entry.steps) for entry in entries]
    # Sampling rate 1 makes the PRV code take log(0) = -inf on purpose; numpy warns about it.
    with np.errstate(divide="ignore", invalid="ignore"):
        epsilon = float(opacus_accountant.get_epsilon(delta=delta))
    if math.isnan(epsilon):
        raise ArithmeticError(f"{accountant} accountant returned NaN for history {[e.to_list() for e in entries]}")
    return epsilon


class PrivacyAccountant:
    """The privacy spent by one party (a device, or a whole DP-FedAvg run) so far.

    Record each step (or batch of identical steps) with :meth:`record`; ask
    :meth:`epsilon` for the spend and :meth:`would_exceed` before spending more.
    :meth:`to_dict` / :meth:`from_dict` carry the full history through JSON (for
    Flower's ``Context.state`` or a checkpoint) and reproduce epsilon exactly.
    """

    def __init__(self, name: AccountantName = "rdp", history: Iterable[ScheduleEntry] = ()) -> None:
        _opacus_accountant(name)  # rejects unknown names now rather than at the first epsilon
        self._name: AccountantName = name
        self._history: list[ScheduleEntry] = _merged(history)

    @property
    def name(self) -> AccountantName:
        return self._name

    @property
    def history(self) -> tuple[ScheduleEntry, ...]:
        return tuple(self._history)

    @property
    def total_steps(self) -> int:
        return sum(entry.steps for entry in self._history)

    def record(self, noise_multiplier: float, sampling_rate: float, steps: int = 1) -> None:
        """Adds ``steps`` steps of the given mechanism to the history."""
        self._history = _merged([*self._history, ScheduleEntry(noise_multiplier, sampling_rate, steps)])

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` spent so far (0 before the first step)."""
        return compute_epsilon(self._history, delta, self._name)

    def epsilon_after(self, planned: Iterable[ScheduleEntry], delta: float) -> float:
        """Epsilon at ``delta`` if the ``planned`` steps were taken too; the state does not change."""
        return compute_epsilon([*self._history, *planned], delta, self._name)

    def would_exceed(
        self, *, target_epsilon: float, delta: float, noise_multiplier: float, sampling_rate: float, steps: int
    ) -> bool:
        """Whether ``steps`` more steps of this mechanism would take epsilon above ``target_epsilon``.

        Spending exactly the budget is allowed. The state does not change, so a device
        can ask before it trains and decline the round instead.
        """
        if not target_epsilon > 0:
            raise ValueError(f"target_epsilon: must be positive, got {target_epsilon}")
        planned = ScheduleEntry(noise_multiplier, sampling_rate, steps)
        return self.epsilon_after([planned], delta) > target_epsilon

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: the accountant name and the full history."""
        return {
            "format": STATE_FORMAT,
            "accountant": self._name,
            "history": [entry.to_list() for entry in self._history],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PrivacyAccountant:
        """Restores :meth:`to_dict` output; a malformed state raises ``ValueError`` naming the bad field."""
        if not isinstance(values, Mapping):
            raise ValueError(f"accountant state: expected a mapping, got {type(values).__name__}")
        if values.get("format") != STATE_FORMAT:
            raise ValueError(f"accountant state format: expected {STATE_FORMAT}, got {values.get('format')!r}")
        name = values.get("accountant")
        if name not in ACCOUNTANT_NAMES:
            raise ValueError(f"accountant: {name!r} is not one of {', '.join(map(repr, ACCOUNTANT_NAMES))}")
        history = values.get("history")
        if not isinstance(history, list):
            raise ValueError(f"history: expected a list, got {history!r}")
        return cls(cast(AccountantName, name), schedule_from_lists(history, "history"))

    def opacus_state_dict(self) -> dict[str, Any]:
        """State in Opacus's own format, for ``PrivacyEngine.accountant.load_state_dict``."""
        return {"history": [tuple(entry.to_list()) for entry in self._history], "mechanism": self._name}

    @classmethod
    def from_opacus(cls, accountant: IAccountant) -> PrivacyAccountant:
        """Copies the history of an Opacus accountant (for example ``PrivacyEngine.accountant``)."""
        name = accountant.mechanism()
        if name not in ACCOUNTANT_NAMES:
            raise ValueError(f"accountant: Opacus mechanism {name!r} is not one of {', '.join(ACCOUNTANT_NAMES)}")
        return cls(cast(AccountantName, name), schedule_from_lists(list(accountant.history), "history"))


def schedule_from_lists(rows: Sequence[Any], field: str) -> list[ScheduleEntry]:
    """Parses ``[[noise_multiplier, sampling_rate, steps], ...]``; errors name ``field[index]``."""
    entries = []
    for index, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise ValueError(f"{field}[{index}]: expected [noise_multiplier, sampling_rate, steps], got {row!r}")
        noise_multiplier, sampling_rate, steps = row
        if any(isinstance(value, bool) or not isinstance(value, (int, float)) for value in row):
            raise ValueError(f"{field}[{index}]: expected numbers, got {row!r}")
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        try:
            entries.append(ScheduleEntry(float(noise_multiplier), float(sampling_rate), steps).validate())
        except ValueError as error:
            raise ValueError(f"{field}[{index}].{error}") from None
    return entries


def noise_multiplier_for_budget(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The noise multiplier that spends at most ``target_epsilon`` over ``steps`` steps in total.

    Pass the steps of the whole planned run (all rounds, all local epochs), not one round:
    Opacus's ``make_private_with_epsilon`` ignores any earlier history, so sizing the
    noise per round would overspend. Wraps Opacus's ``get_noise_multiplier``, which
    returns the upper end of its bisection (epsilon within ``epsilon_tolerance`` below
    the target); the result is checked against the target here before it is returned.
    """
    check_delta(delta)
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon: must be positive, got {target_epsilon}")
    if steps <= 0:
        raise ValueError(f"steps: must be positive, got {steps}")
    ScheduleEntry(1.0, sampling_rate, steps).validate()
    _opacus_accountant(accountant)
    from opacus.accountants.utils import get_noise_multiplier

    with np.errstate(divide="ignore", invalid="ignore"):
        noise_multiplier = float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sampling_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
        )
    spent = compute_epsilon([ScheduleEntry(noise_multiplier, sampling_rate, steps)], delta, accountant)
    if spent > target_epsilon:
        raise ArithmeticError(f"noise multiplier {noise_multiplier} spends {spent} > target {target_epsilon}")
    return noise_multiplier
