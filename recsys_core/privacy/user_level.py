"""User-level DP-FedAvg maths: clip each client's update, add Gaussian noise to the sum, account per round.

Unit of privacy: one user (all their interactions, i.e. one client). Neighbouring
relation: add or remove one user. Each client clips its shared-parameter update to
L2 norm ``clip_norm`` (C), so one user changes the sum of updates by at most C, and
Gaussian noise of standard deviation ``noise_multiplier * clip_norm`` (sigma * C) is
added to that sum. One round is then one Gaussian mechanism with noise multiplier
sigma, which is what the accountants compose.

The noise is either *central* (the server draws it) or *distributed* (each client
draws a share, so the sum that secure aggregation reveals is already noised).

Noise comes from numpy's ``Generator``: good statistics, but not a cryptographic
source, and floating-point Gaussian samples leak through their low bits
(Mironov 2012). Deployments that must resist such attacks need a discrete or
snapped mechanism; the accounting here is unchanged by that choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys_core.privacy.accountant import ScheduleEntry, check_delta, compute_epsilon
from recsys_core.privacy.names import AccountantName, ClientSampling

EpsilonClaim = Literal["with_amplification", "without_amplification"]


def _check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be positive and finite, got {value}")


def clip_update(update: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scales ``update`` so that its L2 norm over all arrays together is at most ``clip_norm``.

    Returns the clipped copy (same keys, shapes and dtypes) and the norm before clipping,
    which adaptive clipping and the logs may use (it is private: do not send it in clear).
    The norm is joint, not per array: per-array clipping to C would bound the whole
    update only by C times the square root of the number of arrays.
    """
    _check_positive("clip_norm", clip_norm)
    squared = 0.0
    for name, array in update.items():
        if not np.issubdtype(np.asarray(array).dtype, np.floating):
            # Scaling an integer array would truncate it; updates are differences of float weights.
            raise ValueError(f"update[{name!r}] has dtype {np.asarray(array).dtype}; expected floating point")
        values = np.asarray(array, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            # A NaN norm makes every comparison false and would let the update through unclipped.
            raise ValueError(f"update[{name!r}] holds NaN or infinite values; it cannot be clipped")
        squared += float(np.dot(values.ravel(), values.ravel()))
    norm = math.sqrt(squared)
    scale = 1.0 if norm <= clip_norm else clip_norm / norm
    clipped = _scaled(update, scale)
    # Rounding the scaled values to float32 (or float16) can leave the norm a few ulps above C;
    # shrink by the coarsest dtype's resolution until it is not (one extra pass in practice).
    resolution = max((float(np.finfo(np.asarray(a).dtype).eps) for a in update.values()), default=0.0)
    while scale < 1.0 and (excess := _norm(clipped)) > clip_norm:
        scale *= clip_norm / excess * (1 - 4 * resolution)
        clipped = _scaled(update, scale)
    return clipped, norm


def _scaled(update: Mapping[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    if scale == 1.0:
        return {name: np.array(array, copy=True) for name, array in update.items()}
    # np.asarray, not .astype: a 0-d array times a float is a numpy scalar (a VAE's step counter would leave
    # the device as something Flower's Array refuses).
    return {name: np.asarray(np.asarray(array, dtype=np.float64) * scale, dtype=np.asarray(array).dtype)
            for name, array in update.items()}


def _norm(update: Mapping[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in update.values()))


def central_noise_std(noise_multiplier: float, clip_norm: float) -> float:
    """Standard deviation of the noise on the sum of clipped updates: sigma * C."""
    _check_positive("noise_multiplier", noise_multiplier)
    _check_positive("clip_norm", clip_norm)
    return noise_multiplier * clip_norm


def distributed_noise_std(noise_multiplier: float, clip_norm: float, min_surviving_devices: int) -> float:
    """Standard deviation of one client's share: sigma * C / sqrt(min_surviving_devices).

    Shares are independent, so the sum over ``s`` survivors has variance
    ``s / min_surviving_devices * (sigma * C)**2``. Sizing for the minimum is the
    conservative choice: with more survivors the sum carries more noise than the
    accountant assumes (utility lost, privacy kept), never less. A round with fewer
    than ``min_surviving_devices`` survivors is under-noised and must be discarded,
    not aggregated. Clients that collude with the server and reveal their shares
    remove that much noise; ``min_surviving_devices`` should count honest clients only.
    """
    _check_positive("noise_multiplier", noise_multiplier)
    _check_positive("clip_norm", clip_norm)
    if isinstance(min_surviving_devices, bool) or not isinstance(min_surviving_devices, int) \
            or min_surviving_devices < 1:
        raise ValueError(f"min_surviving_devices: must be a positive integer, got {min_surviving_devices!r}")
    return noise_multiplier * clip_norm / math.sqrt(min_surviving_devices)


def central_noise(
    shape: tuple[int, ...], noise_multiplier: float, clip_norm: float, generator: np.random.Generator
) -> np.ndarray:
    """Gaussian noise (float64) of standard deviation sigma * C, for the server to add to the sum of updates."""
    return generator.normal(0.0, central_noise_std(noise_multiplier, clip_norm), size=shape)


def distributed_noise_share(
    shape: tuple[int, ...],
    noise_multiplier: float,
    clip_norm: float,
    min_surviving_devices: int,
    generator: np.random.Generator,
) -> np.ndarray:
    """One client's share of the noise (float64), added to its clipped update before secure aggregation.

    See :func:`distributed_noise_std` for why shares are sized for the minimum number of survivors.
    """
    return generator.normal(0.0, distributed_noise_std(noise_multiplier, clip_norm, min_surviving_devices),
                            size=shape)


def privatize_update(
    update: Mapping[str, np.ndarray], clip_norm: float, noise_std: float | None, generator: np.random.Generator
) -> dict[str, np.ndarray]:
    """The device side of DP-FedAvg: ``update`` clipped to ``clip_norm``, plus a noise share if ``noise_std``.

    Under distributed noise ``noise_std`` is :func:`distributed_noise_std`; the generator
    must be the device's own secret (OS entropy), since noise the server can regenerate
    protects nothing. The result keeps each array's dtype.
    """
    clipped, _ = clip_update(update, clip_norm)
    if noise_std is None:
        return clipped
    # np.asarray, not .astype: arithmetic on a 0-d array gives a numpy scalar, which no wire format takes.
    return {name: np.asarray(np.asarray(array, dtype=np.float64) + generator.normal(0.0, noise_std,
                                                                                   size=np.shape(array)),
                             dtype=np.asarray(array).dtype) for name, array in clipped.items()}


def noisy_mean_update(
    updates: Sequence[Mapping[str, np.ndarray]],
    *,
    expected_devices: int,
    clip_norm: float,
    central_noise_multiplier: float | None,
    generator: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The server side of DP-FedAvg: (sum of clipped updates + noise) / ``expected_devices`` (float64).

    ``central_noise_multiplier``: the server clips every update again (it sees them, and the
    guarantee must not rest on clients clipping honestly) and adds Gaussian noise of
    standard deviation sigma * C to the sum. ``None``: distributed noise, already inside
    the updates, which must then not be clipped again (the noise would be shrunk).

    The denominator is the planned number of clients per round, not the number that
    replied: a data-independent constant, so one user moves the mean by at most
    C / expected_devices whoever else dropped out.
    """
    if expected_devices < 1:
        raise ValueError(f"expected_devices: must be at least 1, got {expected_devices}")
    if not updates:
        raise ValueError("updates: need at least one client update")
    names = list(updates[0])
    total = {name: np.zeros(np.shape(updates[0][name]), dtype=np.float64) for name in names}
    for update in updates:
        if central_noise_multiplier is not None:
            update, _ = clip_update(update, clip_norm)
        for name in names:
            total[name] += np.asarray(update[name], dtype=np.float64)
    if central_noise_multiplier is not None:
        for name in names:
            total[name] += central_noise(total[name].shape, central_noise_multiplier, clip_norm, generator)
    return {name: value / expected_devices for name, value in total.items()}


def sampling_assumption(sampling: ClientSampling) -> str:
    """What the amplified epsilon assumes about client sampling, in words for the ledger."""
    if sampling == "poisson":
        return ("Poisson device sampling: every device joins each round independently with probability "
                "q = devices_per_round / num_devices, which is what Opacus's amplification analysis assumes.")
    return ("Fixed-size device sampling: exactly devices_per_round devices are drawn without replacement each "
            "round (Flower's strategies and recsys_core.federated.sampling do this). Opacus's amplification "
            "analysis assumes Poisson sampling with q = devices_per_round / num_devices, so the amplified "
            "epsilon is a Poisson approximation, not a proven bound for this run.")


@dataclass(frozen=True)
class UserLevelEpsilon:
    """User-level epsilon of a DP-FedAvg run, with and without amplification by client sampling.

    ``with_amplification``: every round is a subsampled Gaussian mechanism with sampling
    rate ``sampling_rate`` = devices_per_round / num_devices, composed over all ``rounds``.
    It holds for every user only if sampling is Poisson and nobody the guarantee is
    meant against learns who took part in which round.

    ``without_amplification``: every round a user took part in is a full Gaussian
    mechanism (sampling rate 1), composed over the most rounds any user joined
    (``max_rounds_joined``); rounds a user sat out do not touch their data. It
    assumes only that the choice of clients does not depend on their data, and holds
    even if participation is public.

    ``claimed`` names the figure the run states, ``reason`` says why.
    """

    accountant: AccountantName
    delta: float
    noise_multiplier: float
    sampling_rate: float
    rounds: int
    max_rounds_joined: int
    sampling: ClientSampling
    participation_hidden: bool
    with_amplification: float
    without_amplification: float
    claimed: EpsilonClaim
    claimed_epsilon: float
    reason: str
    sampling_assumption: str


def user_level_epsilon(
    *,
    noise_multiplier: float,
    rounds: int,
    devices_per_round: int,
    num_devices: int,
    delta: float,
    max_rounds_joined: int | None = None,
    accountant: AccountantName = "rdp",
    sampling: ClientSampling = "fixed_size",
    participation_hidden: bool = False,
) -> UserLevelEpsilon:
    """User-level epsilon at ``delta`` of ``rounds`` DP-FedAvg rounds with noise multiplier sigma.

    ``max_rounds_joined``: the most rounds in which any one client's update left the
    device (count a round if the update was sent, even if the round later failed);
    ``None`` when unknown, which counts every round. The claimed figure is the smallest
    bound that is valid for the run: the amplified one only when ``sampling`` is
    ``"poisson"`` and ``participation_hidden`` (an observer of the released models
    cannot tell who took part; false for the server under distributed noise, which
    sees who sent masked updates); otherwise the unamplified one.
    """
    check_delta(delta)
    _check_positive("noise_multiplier", noise_multiplier)
    if rounds < 0:
        raise ValueError(f"rounds: must not be negative, got {rounds}")
    if not 1 <= devices_per_round <= num_devices:
        raise ValueError(f"devices_per_round: must be between 1 and num_devices = {num_devices}, "
                         f"got {devices_per_round}")
    joined = rounds if max_rounds_joined is None else max_rounds_joined
    if not 0 <= joined <= rounds:
        raise ValueError(f"max_rounds_joined: must be between 0 and rounds = {rounds}, got {joined}")
    sampling_rate = devices_per_round / num_devices
    with_amplification = compute_epsilon([ScheduleEntry(noise_multiplier, sampling_rate, rounds)], delta, accountant)
    without_amplification = compute_epsilon([ScheduleEntry(noise_multiplier, 1.0, joined)], delta, accountant)

    claimed: EpsilonClaim
    if sampling == "poisson" and participation_hidden:
        # Both bounds hold; the run may state the smaller one.
        if with_amplification <= without_amplification:
            claimed, reason = "with_amplification", (
                "Clients are Poisson-sampled and participation is hidden, so amplification by sampling applies, "
                "and it gives the smaller of the two valid bounds.")
        else:
            claimed, reason = "without_amplification", (
                "Both bounds are valid (Poisson sampling, hidden participation); no user joined enough rounds "
                "for amplification to help, so the unamplified bound is the smaller one.")
    else:
        claimed = "without_amplification"
        missing = []
        if sampling != "poisson":
            missing.append("clients are sampled as a fixed-size set without replacement, not by Poisson sampling")
        if not participation_hidden:
            missing.append("who took part in each round is not hidden from the party the guarantee is against")
        reason = ("Amplification by client sampling is not claimed because " + " and ".join(missing)
                  + "; the unamplified bound needs neither assumption.")
    claimed_epsilon = with_amplification if claimed == "with_amplification" else without_amplification
    return UserLevelEpsilon(
        accountant=accountant,
        delta=delta,
        noise_multiplier=noise_multiplier,
        sampling_rate=sampling_rate,
        rounds=rounds,
        max_rounds_joined=joined,
        sampling=sampling,
        participation_hidden=participation_hidden,
        with_amplification=with_amplification,
        without_amplification=without_amplification,
        claimed=claimed,
        claimed_epsilon=claimed_epsilon,
        reason=reason,
        sampling_assumption=sampling_assumption(sampling),
    )
