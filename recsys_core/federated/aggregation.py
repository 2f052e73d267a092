"""The server's side of a training round, with no framework in it: one path for every engine.

Whatever carried the updates (plain replies, a securely aggregated sum, a plain Python
loop), the server ends a round holding a :class:`RoundSum`: the weighted sum of the
devices' updates, the sum of their weights, and who contributed. :func:`apply_round`
then does the rest in one place: the gates (too few updates, too few noise shares), the
central DP noise, the server optimiser's step (FedAvg, FedProx, FedAdam, FedYogi,
FedAdagrad, with Flower's maths and defaults) and the evidence the round record keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.records import RoundStatus, UserLevelEvidence
from recsys_core.federated.robust import robust_mean_update
from recsys_core.privacy.user_level import central_noise, clip_update

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class RoundSum:
    """What the server learns from a round's training updates: their weighted sum, never one update.

    ``update_sum`` is ``sum_i w_i * update_i`` in float64, shaped like the global arrays, where
    ``update_i`` is the device's trained shared parameters minus the ones it received
    (under user-level DP: its clipped, possibly noised update, with ``w_i = 1``).
    """

    update_sum: Arrays
    weight_sum: float
    #: How many updates are in the sum (partitions are known only where the server saw each reply).
    contributors: int
    #: ``sum_i w_i * loss_i`` and ``sum_i w_i`` over the devices that reported a training loss.
    loss_sum: float = 0.0
    loss_weight: float = 0.0
    #: Secure aggregation: update coordinates the devices clipped to the layout's range.
    clipped_coordinates: int | None = None
    #: Plain user-level DP: the largest update norm before the server clipped it.
    largest_update_norm: float | None = None


def add_round_sums(first: RoundSum, second: RoundSum) -> RoundSum:
    """The sum of two disjoint sets of updates (plain FedAvg sums: no clipping evidence to merge)."""
    return RoundSum({name: first.update_sum[name] + second.update_sum[name] for name in first.update_sum},
                    first.weight_sum + second.weight_sum, first.contributors + second.contributors,
                    first.loss_sum + second.loss_sum, first.loss_weight + second.loss_weight)


def sum_plain_updates(config: FederatedConfig, current: Arrays,
                      updates: Sequence[tuple[Arrays, int, float]]) -> RoundSum:
    """The :class:`RoundSum` of updates the server received one by one: ``(arrays, num_examples, train_loss)``.

    Without user-level DP ``arrays`` are the trained shared parameters and the weight is
    the example count (FedAvg). Under user-level DP they are the device's update, every
    device weighs 1, and under central noise the server clips each update again: the
    guarantee must not rest on devices clipping honestly. Distributed noise is already
    inside the updates, which must then not be clipped again (that would shrink the noise).
    """
    if not config.privacy.user_level.enabled:
        if config.server.aggregation != "mean":
            return _robust_sum(config, current, updates)
        return _weighted_sum(current, updates)
    running = UserLevelSum(config, current)
    for arrays, _, _ in updates:
        running.add(arrays)
    return running.round_sum()


class UserLevelSum:
    """The sum of user-level updates as they arrive, so a large round never holds them all at once.

    Every update weighs 1 and the sum divides by nothing, so adding in chunks, in the same
    order, gives the same float64 sum as adding the whole round at once. Under central noise
    each update is clipped again here (the guarantee must not rest on devices clipping).
    """

    def __init__(self, config: FederatedConfig, current: Arrays) -> None:
        self.user_level = config.privacy.user_level
        self.total = {name: np.zeros(np.shape(value), dtype=np.float64) for name, value in current.items()}
        self.count = 0
        self.largest_norm: float | None = None

    def add(self, arrays: Arrays) -> None:
        update = dict(arrays)
        if self.user_level.noise_placement == "central":
            update, norm = clip_update(update, self.user_level.clip_norm)
            self.largest_norm = max(norm, self.largest_norm or 0.0)
        for name in self.total:
            self.total[name] += np.asarray(update[name], dtype=np.float64)
        self.count += 1

    def round_sum(self) -> RoundSum:
        return RoundSum(self.total, float(self.count), self.count, largest_update_norm=self.largest_norm)


def _weighted_sum(current: Arrays, updates: Sequence[tuple[Arrays, int, float]]) -> RoundSum:
    """FedAvg's example-weighted sum, with the weighted mean formed as Flower forms it.

    Flower averages the replies' parameters in their own dtype, ``sum_i x_i * (n_i / n)`` in
    reply order; the sum here is ``n * (that mean - current)``, which the core divides by ``n``
    again exactly (integer weights, float32 parameters), so a seeded run gives the same model,
    bit for bit, on either engine and as before this core existed.
    """
    weight_sum = sum(num_examples for _, num_examples, _ in updates)
    if not updates or weight_sum <= 0:
        zeros = {name: np.zeros(np.shape(value), dtype=np.float64) for name, value in current.items()}
        return RoundSum(zeros, float(weight_sum), len(updates))
    mean: Arrays = {}
    for arrays, num_examples, _ in updates:
        factor = num_examples / weight_sum
        for name in current:
            if name in mean:
                mean[name] += arrays[name] * factor
            else:
                mean[name] = arrays[name] * factor
    total = {name: (np.asarray(mean[name], dtype=np.float64) - np.asarray(value, dtype=np.float64)) * weight_sum
             for name, value in current.items()}
    reported = [(float(n), loss) for _, n, loss in updates if math.isfinite(loss)]  # under DP no loss is reported
    return RoundSum(total, float(weight_sum), len(updates), sum(n * loss for n, loss in reported),
                    sum(n for n, _ in reported))


def _robust_sum(config: FederatedConfig, current: Arrays, updates: Sequence[tuple[Arrays, int, float]]) -> RoundSum:
    """``server.aggregation = "median"`` or ``"trimmed_mean"``: the robust mean update, times the weight sum
    (which :func:`apply_round` divides by again), so the server step is the same as for FedAvg's mean."""
    weighted = _weighted_sum(current, updates)  # the weights and losses, as FedAvg reports them
    if not updates or weighted.weight_sum <= 0:
        return weighted
    mean = robust_mean_update(current, [arrays for arrays, _, _ in updates], config.server.aggregation,
                              config.server.trim_fraction)
    return replace(weighted, update_sum={name: value * weighted.weight_sum for name, value in mean.items()})


@dataclass
class ServerOptimizer:
    """The server's step from a mean update, with its state between rounds (Flower's FedOpt maths).

    FedAvg: ``current + server lr * mean``; FedProx: ``current + mean`` (its proximal term
    acts on the devices). FedAdam, FedYogi and FedAdagrad keep the moments ``m_t`` and
    ``v_t`` and use Flower's defaults for beta_1 and beta_2 and its bias-corrected FedAdam
    step, so a run behaves as it did on Flower's strategies.
    """

    strategy: str
    tau: float = 1e-3
    m_t: Arrays = field(default_factory=dict)
    v_t: Arrays = field(default_factory=dict)

    @property
    def betas(self) -> tuple[float, float]:
        return (0.0, 0.0) if self.strategy == "fedadagrad" else (0.9, 0.99)

    def step(self, current: Arrays, mean_update: Arrays, server_round: int, learning_rate: float) -> Arrays:
        """The new global arrays, each in its own dtype.

        The arithmetic is Flower's, expression for expression and in the parameters' own
        dtype, so that a run reproduces one made on Flower's strategies bit for bit.
        """
        mean = {name: np.asarray(mean_update[name]).astype(_float_dtype(value)) for name, value in current.items()}
        if self.strategy in ("fedavg", "fedprox"):
            rate = 1.0 if self.strategy == "fedprox" else learning_rate
            return {name: np.asarray(value + rate * mean[name]).astype(value.dtype) for name, value in current.items()}
        beta_1, beta_2 = self.betas
        if not self.m_t:
            self.m_t = {name: np.zeros_like(value) for name, value in mean.items()}
        if not self.v_t:
            self.v_t = {name: np.zeros_like(value) for name, value in mean.items()}
        self.m_t = {name: beta_1 * self.m_t[name] + (1 - beta_1) * mean[name] for name in current}
        if self.strategy == "fedadam":
            self.v_t = {name: beta_2 * self.v_t[name] + (1 - beta_2) * (mean[name] ** 2) for name in current}
            # Flower's bias-corrected step size, with its round offset.
            rate = (learning_rate * np.sqrt(1 - np.power(beta_2, server_round + 1.0))
                    / (1 - np.power(beta_1, server_round + 1.0)))
        elif self.strategy == "fedyogi":
            self.v_t = {name: self.v_t[name] - (1.0 - beta_2) * (mean[name] ** 2)
                        * np.sign(self.v_t[name] - mean[name] ** 2) for name in current}
            rate = learning_rate
        elif self.strategy == "fedadagrad":
            self.v_t = {name: self.v_t[name] + (mean[name] ** 2) for name in current}
            rate = learning_rate
        else:
            raise ValueError(f"server strategy {self.strategy!r} is not one of fedavg, fedprox, fedadam, fedyogi, "
                             "fedadagrad")
        return {name: np.asarray(value + rate * self.m_t[name] / (np.sqrt(self.v_t[name]) + self.tau))
                .astype(value.dtype) for name, value in current.items()}

    def state(self) -> Arrays:
        """The moments as flat arrays (``m_t/<name>``, ``v_t/<name>``), for checkpoints."""
        return {**{f"m_t/{name}": value for name, value in self.m_t.items()},
                **{f"v_t/{name}": value for name, value in self.v_t.items()}}

    def restore(self, flat: Arrays) -> None:
        """Puts :meth:`state` back (a checkpoint of the same strategy)."""
        self.m_t = {key.removeprefix("m_t/"): np.asarray(value) for key, value in flat.items()
                    if key.startswith("m_t/")}
        self.v_t = {key.removeprefix("v_t/"): np.asarray(value) for key, value in flat.items()
                    if key.startswith("v_t/")}


def _float_dtype(value: np.ndarray) -> np.dtype:
    """The dtype the server step computes a parameter in: its own if floating, else float64."""
    dtype = np.asarray(value).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def server_optimizer(config: FederatedConfig) -> ServerOptimizer:
    """The run's server optimiser, as ``server.strategy`` names it."""
    return ServerOptimizer(config.server.strategy, config.server.adaptivity_tau)


@dataclass(frozen=True)
class RoundResult:
    """The global arrays after a round and what the round record says about the step."""

    arrays: Arrays
    status: RoundStatus
    status_reason: str = ""
    train_loss: float | None = None
    user_level: UserLevelEvidence | None = None
    clipped_coordinates: int | None = None
    #: Set when the run cannot go on (the server step gave a non-finite model): what to tell the user.
    fatal: str = ""


def round_gate(config: FederatedConfig, contributions: int) -> tuple[RoundStatus, str] | None:
    """Why a round with ``contributions`` updates must leave the model unchanged, or None.

    Distributed noise shares are sized for ``privacy.user_level.min_surviving_devices``:
    a sum of fewer carries too little noise to release.
    """
    if contributions < config.server.min_devices:
        return "skipped", f"{contributions} updates, fewer than server.min_devices = {config.server.min_devices}"
    user_level = config.privacy.user_level
    if (user_level.enabled and user_level.noise_placement == "distributed"
            and contributions < user_level.min_surviving_devices):
        return "discarded", (f"{contributions} updates, fewer than privacy.user_level.min_surviving_devices = "
                             f"{user_level.min_surviving_devices}")
    return None


def apply_round(config: FederatedConfig, current: Arrays, round_sum: RoundSum, optimizer: ServerOptimizer,
                server_round: int, noise_generator: np.random.Generator | None = None) -> RoundResult:
    """The round's new global arrays from the sum of its updates, or the old ones with the reason.

    Under user-level DP the mean is (sum + central noise) / ``server.devices_per_round``: a
    data-independent denominator, so one user moves the mean by at most C / devices_per_round
    whoever else dropped out. Central noise is drawn from OS entropy by default: the run seed
    is public, and noise that can be regenerated from it could be subtracted again.
    """
    if (gate := round_gate(config, round_sum.contributors)) is not None:
        return RoundResult(current, *gate)
    user_level = config.privacy.user_level
    evidence = None
    if (released := config.released_arrays(server_round)) is not None:
        # A count-based model's round changes only the part it releases, whatever a device sent.
        round_sum = replace(round_sum, update_sum={
            name: value if name in released else np.zeros_like(value) for name, value in round_sum.update_sum.items()})
    if user_level.enabled:
        expected = config.server.devices_per_round
        noisy = dict(round_sum.update_sum)
        evidence = UserLevelEvidence(
            user_level.noise_multiplier, user_level.clip_norm, user_level.noise_placement, expected,
            round_sum.contributors, user_level.min_surviving_devices, round_sum.largest_update_norm)
        if user_level.noise_placement == "central":
            generator = noise_generator if noise_generator is not None else np.random.default_rng()
            noise = {name: central_noise(np.shape(value), user_level.noise_multiplier, user_level.clip_norm,
                                         generator) for name, value in noisy.items()
                     if released is None or name in released}
            noisy = {name: value + noise.get(name, 0.0) for name, value in noisy.items()}
            drawn = np.concatenate([value.ravel() for value in noise.values()])
            evidence = replace(evidence, noise_std_measured=float(np.std(drawn)), noise_coordinates=int(drawn.size),
                               noise_std_declared=user_level.noise_multiplier * user_level.clip_norm)
        mean = {name: value / expected for name, value in noisy.items()}
        train_loss = None
    else:
        if not round_sum.weight_sum > 0:
            return RoundResult(current, "skipped", "the updates' weights sum to zero")
        mean = {name: value / round_sum.weight_sum for name, value in round_sum.update_sum.items()}
        train_loss = round_sum.loss_sum / round_sum.loss_weight if round_sum.loss_weight > 0 else None
    before = optimizer.state()
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught below, and the round refused
        updated = optimizer.step(current, {name: mean[name].reshape(np.shape(value))
                                           for name, value in current.items()},
                                 server_round, config.server.learning_rate_at(server_round))
    # The moments count too: FedAdam's v_t can overflow while the step it gives stays finite.
    if broken := [name for name, value in {**updated, **optimizer.state()}.items() if not np.all(np.isfinite(value))]:
        # Never published: the model and the optimiser's moments stay as they were before this round.
        optimizer.restore(before)
        reason = f"the server step gave NaN or infinite values in {broken[:3]}; the model was not updated"
        return RoundResult(current, "failed", reason, user_level=evidence, fatal=(
            f"round {server_round}: {reason}. The run stops here; checkpoint/ holds the last finite model. Lower "
            "server.server_learning_rate, or see this round's failures in rounds.jsonl, then resume with --resume"))
    return RoundResult(updated, "aggregated", train_loss=train_loss, user_level=evidence,
                       clipped_coordinates=round_sum.clipped_coordinates)
