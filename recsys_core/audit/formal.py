"""The formal half of an audit: recompute every epsilon twice and check the ledger against the log.

Accountant one is the one the run used (Opacus's RDP or PRV, through
:func:`recsys_core.privacy.ledger.verify`). Accountant two is Google's
``dp_accounting`` privacy-loss-distribution (PLD) accountant, an independent
implementation of a tight analysis; its pessimistic estimate is an upper bound on the
true epsilon up to its discretisation. A recorded epsilon more than
``UNDER_COUNT_TOLERANCE`` below accountant two is an under-count and fails; RDP
figures sit above PLD (RDP's conversion to (epsilon, delta) is loose), which is fine.

Then the ledger is checked against what the run logged round by round (the hash-chained
``rounds.jsonl``) and against the resolved config: noise really on, the clipping bound,
sampling rates, rounds joined per device, no device past its budget, and secure
aggregation on or off as configured.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant

from recsys_core.federated.records import RoundRecord
from recsys_core.privacy.accountant import PrivacyAccountant, ScheduleEntry, compute_epsilon
from recsys_core.privacy.ledger import LedgerError, PrivacyLedger, verify
from recsys_core.privacy.secrets import NOT_PRIVATE_WARNING

#: A recorded epsilon may sit this far (relative) below the PLD figure before it counts as an under-count:
#: PLD discretisation and PRV's own error bounds are well inside it.
UNDER_COUNT_TOLERANCE = 0.02
#: The measured standard deviation of central noise may differ from sigma * C by this many of its
#: standard errors (1 / sqrt(2 n) relative, for n Gaussian coordinates): a false alarm is then negligible,
#: while noise that is off, or of half the declared size, is far outside.
NOISE_STD_STANDARD_ERRORS = 6.0
SECOND_ACCOUNTANT = "dp_accounting PLD (pessimistic)"


@dataclass(frozen=True)
class Check:
    """One formal check: what was checked, whether it held, and the evidence in words."""

    name: str
    passed: bool
    detail: str


def pld_epsilon(schedule: Sequence[ScheduleEntry], delta: float) -> float:
    """Epsilon at ``delta`` of a schedule of Poisson-subsampled Gaussian mechanisms, by dp_accounting's PLD."""
    entries = [entry for entry in schedule if entry.steps > 0]
    if not entries:
        return 0.0
    accountant = pld_privacy_accountant.PLDAccountant()
    for entry in entries:
        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(entry.noise_multiplier)
        if entry.sampling_rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(entry.sampling_rate, event)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, entry.steps))
    return float(accountant.get_epsilon(delta))


def _agreement(name: str, recorded: float, second: float) -> Check:
    ratio = recorded / second if second > 0 else (1.0 if recorded == 0 else math.inf)
    under = recorded < second * (1 - UNDER_COUNT_TOLERANCE)
    detail = (f"recorded {recorded:.4g}, {SECOND_ACCOUNTANT} {second:.4g} (ratio {ratio:.3f})"
              + ("; the run UNDER-COUNTS epsilon" if under else ""))
    return Check(name, not under, detail)


def recompute_with_two_accountants(ledger: PrivacyLedger, source: str = "ledger") -> list[Check]:
    """Accountant one must reproduce every recorded epsilon; accountant two must not exceed any."""
    checks = []
    try:
        verify(ledger, source=source)
        accountants = sorted({name for name in (ledger.local and ledger.local.accountant,
                                                 ledger.user_level and ledger.user_level.epsilon.accountant) if name})
        checks.append(Check("recomputed by the run's accountant", True,
                            f"every recorded epsilon recomputes with Opacus {'/'.join(accountants).upper()}"))
    except LedgerError as error:
        checks.append(Check("recomputed by the run's accountant", False, str(error)))
    if ledger.local is not None:
        worst: Check | None = None
        seen: dict[tuple[ScheduleEntry, ...], float] = {}
        for device in ledger.devices:
            if device.local_epsilon is None or device.local_schedule in seen:
                continue
            seen[device.local_schedule] = pld_epsilon(device.local_schedule, ledger.local.delta)
            check = _agreement(f"local epsilon, device {device.device_id}", device.local_epsilon,
                               seen[device.local_schedule])
            if worst is None or (not check.passed and worst.passed):
                worst = check
        if worst is not None:
            checks.append(Check("local epsilons by a second accountant", worst.passed,
                                f"{len(seen)} distinct device schedules; " + (
                                    "none under-counted" if worst.passed else worst.detail)))
    if ledger.user_level is not None:
        epsilon = ledger.user_level.epsilon
        if epsilon.claimed == "with_amplification":
            schedule = [ScheduleEntry(epsilon.noise_multiplier, epsilon.sampling_rate, epsilon.rounds)]
        else:
            schedule = [ScheduleEntry(epsilon.noise_multiplier, 1.0, epsilon.max_rounds_joined)]
        checks.append(_agreement("user-level claimed epsilon by a second accountant", epsilon.claimed_epsilon,
                                 pld_epsilon(schedule, epsilon.delta)))
    return checks


def check_against_log(ledger: PrivacyLedger, config: Mapping[str, Any],
                      rounds: Sequence[RoundRecord]) -> list[Check]:
    """The ledger's mechanism against the resolved config and the per-round log."""
    privacy = config.get("privacy", {})
    source = privacy.get("noise_source", "os_entropy")
    checks = [_secure_aggregation_check(config, rounds), _rounds_joined_check(ledger, rounds),
              Check("DP noise from OS entropy", source == "os_entropy",
                    "privacy.noise_source = 'os_entropy'" if source == "os_entropy" else NOT_PRIVATE_WARNING)]
    if ledger.local is not None:
        checks.extend(_local_checks(ledger, privacy.get("local", {}), rounds))
    elif privacy.get("local", {}).get("enabled"):
        checks.append(Check("local DP recorded", False, "the config enables local DP but the ledger has no local "
                                                        "section"))
    if ledger.user_level is not None:
        checks.extend(_user_level_checks(ledger, config, rounds))
    elif privacy.get("user_level", {}).get("enabled"):
        checks.append(Check("user-level DP recorded", False, "the config enables user-level DP but the ledger has no "
                                                             "user_level section"))
    return checks


def _secure_aggregation_check(config: Mapping[str, Any], rounds: Sequence[RoundRecord]) -> Check:
    configured = bool(config.get("secure_aggregation", {}).get("enabled"))
    logged = {record.secure_aggregation for record in rounds}
    if logged <= {configured}:
        return Check("secure aggregation as configured", True,
                     f"{'on' if configured else 'off'} in the config and in all {len(rounds)} logged rounds")
    return Check("secure aggregation as configured", False,
                 f"the config says {'on' if configured else 'off'} but rounds log {sorted(map(str, logged))}")


def _rounds_joined_check(ledger: PrivacyLedger, rounds: Sequence[RoundRecord]) -> Check:
    joined: Counter[str] = Counter(str(partition) for record in rounds for partition in record.joined)
    wrong = [device for device in ledger.devices if device.rounds_joined != joined[device.device_id]]
    if not wrong:
        return Check("rounds joined per device", True, f"all {len(ledger.devices)} devices' rounds_joined match the "
                                                       "round log")
    first = wrong[0]
    return Check("rounds joined per device", False,
                 f"{len(wrong)} devices differ from the round log, e.g. device {first.device_id}: ledger "
                 f"{first.rounds_joined}, log {joined[first.device_id]}")


def _local_checks(ledger: PrivacyLedger, configured: Mapping[str, Any],
                  rounds: Sequence[RoundRecord]) -> list[Check]:
    assert ledger.local is not None
    local = ledger.local
    checks = []
    settings = [("noise_multiplier", local.noise_multiplier), ("per_sample_clip_norm", local.clip_norm),
                ("target_delta", local.delta), ("target_epsilon", local.target_epsilon)]
    differing = [f"{key}: ledger {value}, config {configured.get(key)}" for key, value in settings
                 if configured.get(key) != value]
    checks.append(Check("local DP settings match the config", not differing, "; ".join(differing) or
                        f"sigma {local.noise_multiplier}, C {local.clip_norm}, delta {local.delta}, budget "
                        f"{local.target_epsilon}"))
    logged_sigmas = {entry.noise_multiplier for record in rounds for reported in record.local_privacy
                     for entry in reported.history}
    ledger_sigmas = {entry.noise_multiplier for device in ledger.devices for entry in device.local_schedule}
    noise_on = bool(logged_sigmas) and min(logged_sigmas) > 0 and logged_sigmas == ledger_sigmas
    checks.append(Check("local noise on, as logged by the devices", noise_on,
                        f"devices logged noise multipliers {sorted(logged_sigmas)}; the ledger's schedules hold "
                        f"{sorted(ledger_sigmas)}"))
    rates = {entry.sampling_rate for device in ledger.devices for entry in device.local_schedule}
    checks.append(Check("local sampling rates", all(0 < rate <= 1 for rate in rates),
                        f"{len(rates)} distinct Poisson sampling rates in (0, 1], from "
                        f"{min(rates, default=0):.3g} to {max(rates, default=0):.3g}"))
    over = [device for device in ledger.devices
            if device.local_epsilon is not None and device.local_epsilon > local.target_epsilon * (1 + 1e-9)]
    checks.append(Check("no device past its budget", not over,
                        f"largest device epsilon {local.epsilon.maximum:.4g} against the budget "
                        f"{local.target_epsilon:g}" + (f"; {len(over)} devices over it" if over else "")))
    return checks


DEVICE_ACCOUNTANTS_CHECK = "devices' own accountants within the ledger and the budget"


def check_device_accountants(ledger: PrivacyLedger, accountants: Mapping[int, PrivacyAccountant]) -> Check:
    """What each device's own accountant says it spent against the ledger's record of it and the budget.

    The ledger is built from what devices reported; a device whose spend never reached the
    server (its update left, then the server lost the round) would be under-counted there.
    Its own accountant, read from its state, is the ground truth this check holds the ledger to.
    """
    assert ledger.local is not None
    local = ledger.local
    recorded = {device.device_id: device for device in ledger.devices}
    epsilon_of: dict[tuple[ScheduleEntry, ...], float] = {}
    problems = []
    for partition, accountant in sorted(accountants.items()):
        device = recorded.get(str(partition))
        if device is not None and accountant.history == device.local_schedule:
            continue  # the same spend: the ledger's own checks cover its epsilon
        if accountant.history not in epsilon_of:
            epsilon_of[accountant.history] = compute_epsilon(accountant.history, local.delta, accountant.name)
        own = epsilon_of[accountant.history]
        logged = device.local_epsilon if device is not None and device.local_epsilon is not None else 0.0
        if own > logged * (1 + 1e-9) or own > local.target_epsilon * (1 + 1e-9):
            problems.append(f"device {partition}: its accountant has spent epsilon {own:.4g} "
                            f"({accountant.total_steps} steps), the ledger records {logged:.4g}, budget "
                            f"{local.target_epsilon:g}")
    if problems:
        return Check(DEVICE_ACCOUNTANTS_CHECK, False, f"{len(problems)} devices spent more than the ledger says or "
                                                      f"their budget allows, e.g. {problems[0]}")
    return Check(DEVICE_ACCOUNTANTS_CHECK, True, f"{len(accountants)} devices' own accountants (their state in the "
                                                 "run directory) spent no more than the ledger records, within "
                                                 f"the budget {local.target_epsilon:g}")


def _user_level_checks(ledger: PrivacyLedger, config: Mapping[str, Any],
                       rounds: Sequence[RoundRecord]) -> list[Check]:
    assert ledger.user_level is not None
    record, epsilon = ledger.user_level, ledger.user_level.epsilon
    configured = config.get("privacy", {}).get("user_level", {})
    server = config.get("server", {})
    settings = [("noise_multiplier", epsilon.noise_multiplier), ("clip_norm", record.clip_norm),
                ("target_delta", epsilon.delta), ("noise_placement", record.noise_placement)]
    differing = [f"{key}: ledger {value}, config {configured.get(key)}" for key, value in settings
                 if configured.get(key) != value]
    if server.get("devices_per_round") != record.devices_per_round:
        differing.append(f"devices_per_round: ledger {record.devices_per_round}, config "
                         f"{server.get('devices_per_round')}")
    checks = [Check("user-level DP settings match the config", not differing, "; ".join(differing) or
                    f"sigma {epsilon.noise_multiplier}, C {record.clip_norm}, delta {epsilon.delta}, "
                    f"{record.noise_placement} noise, {record.devices_per_round} of {record.num_devices} devices "
                    "per round")]
    aggregated = [entry for entry in rounds if entry.status == "aggregated"]
    logged = [entry.user_level for entry in aggregated]
    mismatched = [index for index, evidence in enumerate(logged)
                  if evidence is None or evidence.noise_multiplier != epsilon.noise_multiplier
                  or evidence.clip_norm != record.clip_norm]
    checks.append(Check("sigma and C as logged every round", bool(aggregated) and not mismatched,
                        f"{len(aggregated) - len(mismatched)} of {len(aggregated)} aggregated rounds logged sigma "
                        f"{epsilon.noise_multiplier} and C {record.clip_norm}"))
    if record.noise_placement == "central":
        measured = [(evidence.noise_std_measured / evidence.noise_std_declared,
                     NOISE_STD_STANDARD_ERRORS / math.sqrt(2 * max(evidence.noise_coordinates or 1, 1)))
                    for evidence in logged if evidence is not None and evidence.noise_std_declared
                    and evidence.noise_std_measured is not None]
        ratios = [ratio for ratio, _ in measured]
        noise_on = bool(measured) and all(abs(ratio - 1) <= tolerance for ratio, tolerance in measured)
        checks.append(Check("central noise on, as measured by the server", noise_on,
                            f"measured / declared noise standard deviation over {len(ratios)} rounds: "
                            f"{min(ratios, default=0):.3f} to {max(ratios, default=0):.3f}"))
    else:
        short = [entry.round for entry, evidence in zip(aggregated, logged, strict=True)
                 if evidence is None or evidence.updates < record.min_surviving_devices]
        checks.append(Check("distributed noise: enough surviving shares", not short,
                            f"every aggregated round summed at least min_surviving_devices = "
                            f"{record.min_surviving_devices} noise shares (the server cannot see the noise itself)"
                            if not short else f"rounds {short} summed fewer shares than min_surviving_devices"))
    rate = record.devices_per_round / record.num_devices
    oversampled = [entry.round for entry in rounds if entry.sampled > record.devices_per_round]
    checks.append(Check("device sampling rate", math.isclose(epsilon.sampling_rate, rate) and not oversampled,
                        f"ledger q = {epsilon.sampling_rate:.4g}, devices_per_round / num_devices = {rate:.4g}; "
                        + (f"rounds {oversampled} sampled more devices" if oversampled else
                           "no round sampled more devices than planned")))
    return checks


def guarantee_statement(ledger: PrivacyLedger, secure_aggregation: bool) -> list[str]:
    """The run's guarantee in full, one paragraph per privacy mode, in the manner of TF Privacy's statement."""
    statements = []
    if ledger.local is not None:
        local = ledger.local
        statements.append(
            f"Local (interaction-level) DP. Unit of privacy: {local.unit_of_privacy}; neighbouring relation: "
            f"{local.neighbouring_relation}. Each device's training is "
            f"({local.epsilon.maximum:.3g}, {local.delta:g})-DP at the worst device (median "
            f"{local.epsilon.median:.3g}), accounted by Opacus {local.accountant.upper()} with its standard "
            f"conversion to (epsilon, delta), assuming Poisson sampling of each device's examples (which Opacus's "
            f"DP-SGD does). Noise: added on the device (sigma {local.noise_multiplier}, per-example clip "
            f"{local.clip_norm}). Secure aggregation: {'on' if secure_aggregation else 'off'}.")
    if ledger.user_level is not None:
        record, epsilon = ledger.user_level, ledger.user_level.epsilon
        claim = ("with amplification by device sampling" if epsilon.claimed == "with_amplification"
                 else "without amplification by device sampling")
        noise_source = ("added by the server to the sum" if record.noise_placement == "central" else
                        f"added by each device as a share sized for {record.min_surviving_devices} survivors")
        statements.append(
            f"User-level DP. Unit of privacy: {record.unit_of_privacy}; neighbouring relation: "
            f"{record.neighbouring_relation}. The released models are ({epsilon.claimed_epsilon:.3g}, "
            f"{epsilon.delta:g})-DP {claim}, accounted by Opacus {epsilon.accountant.upper()} over "
            f"{epsilon.rounds} rounds (the most any user joined: {epsilon.max_rounds_joined}). Sampling: "
            f"{epsilon.sampling_assumption} Why this figure: {epsilon.reason} Noise: "
            f"{noise_source} (sigma {epsilon.noise_multiplier}, update clip {record.clip_norm}). Secure aggregation: "
            f"{'on' if secure_aggregation else 'off'}.")
    return statements
