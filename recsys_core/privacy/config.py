"""The privacy settings of a run: local DP-SGD on each device, user-level DP-FedAvg, or both.

Each mode has its own section and is off unless ``enabled``; a disabled section is
ignored. :meth:`PrivacyConfig.validate` rejects the settings under which the stated
guarantee would be void, before any training starts, with one error naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from recsys_core.config import ALLOWS_INFINITY, dataclass_from_dict
from recsys_core.errors import ConfigError
from recsys_core.privacy.names import ACCOUNTANT_NAMES, NOISE_PLACEMENTS, AccountantName, NoisePlacement
from recsys_core.privacy.secrets import NoiseSource

#: Where the section sits in a run config; error messages name keys from here.
SECTION = "privacy"


def _check_noise_multiplier(key: str, value: float) -> None:
    # NaN fails every comparison, hence "not (good)" rather than "bad".
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key}: must be positive and finite, got {value}")


def _check_delta(key: str, value: float, population: int | None, population_name: str) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"{key}: must be in (0, 1), got {value}")
    # delta is the chance the guarantee fails outright; at 1/n one of the n protected units can be exposed.
    if population is not None and population >= 1 and not value < 1 / population:
        raise ConfigError(f"{key}: must be below 1 / {population_name} = 1/{population} = {1 / population:.3g}, "
                          f"got {value}")


def _check_accountant(key: str, value: str) -> None:
    if value not in ACCOUNTANT_NAMES:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, ACCOUNTANT_NAMES))}")


@dataclass(frozen=True)
class LocalPrivacyConfig:
    """Interaction-level DP-SGD (Opacus) on every device, with a per-device budget."""

    enabled: bool = False
    #: Standard deviation of the gradient noise over ``per_sample_clip_norm``.
    noise_multiplier: float = 1.0
    #: Each example's gradient is clipped to this L2 norm (Opacus's ``max_grad_norm``).
    per_sample_clip_norm: float = 1.0
    #: A device declines a round that would take its epsilon above this (at ``target_delta``); inf: never.
    target_epsilon: float = 8.0
    #: Must be below 1 / (the fewest training examples on any device).
    target_delta: float = 1e-5
    accountant: AccountantName = "rdp"

    def validate(self, min_local_examples: int | None = None) -> LocalPrivacyConfig:
        prefix = f"{SECTION}.local"
        _check_noise_multiplier(f"{prefix}.noise_multiplier", self.noise_multiplier)
        if not (self.per_sample_clip_norm > 0 and math.isfinite(self.per_sample_clip_norm)):
            raise ConfigError(f"{prefix}.per_sample_clip_norm: must be positive and finite, "
                              f"got {self.per_sample_clip_norm}")
        if not self.target_epsilon > 0:
            raise ConfigError(f"{prefix}.target_epsilon: the budget must be positive, got {self.target_epsilon}")
        _check_delta(f"{prefix}.target_delta", self.target_delta, min_local_examples,
                     "(the fewest training examples on a device)")
        _check_accountant(f"{prefix}.accountant", self.accountant)
        return self


@dataclass(frozen=True)
class UserLevelPrivacyConfig:
    """User-level DP-FedAvg: clipped client updates, Gaussian noise on their sum."""

    enabled: bool = False
    #: Standard deviation of the noise on the sum of updates, over ``clip_norm``.
    noise_multiplier: float = 1.0
    #: Each client's shared-parameter update is clipped to this L2 norm (over all its arrays).
    clip_norm: float = 1.0
    #: ``central``: the server adds the noise; ``distributed``: each client adds a share (for secure aggregation).
    noise_placement: NoisePlacement = "central"
    #: Distributed noise: shares are sized so that this many surviving clients carry the full noise.
    #: Rounds with fewer survivors are under-noised and must be discarded.
    min_surviving_devices: int = 1
    #: Must be below 1 / (number of users).
    target_delta: float = 1e-5
    accountant: AccountantName = "rdp"
    #: The run's budget: it refuses to start when its rounds could spend more (inf: no budget set).
    target_epsilon: float = field(default=math.inf, metadata={ALLOWS_INFINITY: True})

    def validate(self, num_users: int | None = None, devices_per_round: int | None = None) -> UserLevelPrivacyConfig:
        prefix = f"{SECTION}.user_level"
        _check_noise_multiplier(f"{prefix}.noise_multiplier", self.noise_multiplier)
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ConfigError(f"{prefix}.clip_norm: must be positive and finite, got {self.clip_norm}")
        if self.noise_placement not in NOISE_PLACEMENTS:
            raise ConfigError(f"{prefix}.noise_placement: {self.noise_placement!r} is not one of "
                              f"{', '.join(map(repr, NOISE_PLACEMENTS))}")
        if self.min_surviving_devices < 1:
            raise ConfigError(f"{prefix}.min_surviving_devices: must be at least 1, got {self.min_surviving_devices}")
        if (self.noise_placement == "distributed" and devices_per_round is not None
                and self.min_surviving_devices > devices_per_round):
            raise ConfigError(f"{prefix}.min_surviving_devices: {self.min_surviving_devices} exceeds "
                              f"server.devices_per_round = {devices_per_round}; no round could ever count. "
                              f"Set it to at most {devices_per_round} (e.g. --set "
                              f"privacy.user_level.min_surviving_devices={max(1, int(0.95 * devices_per_round))}): "
                              f"each device's noise share is sized for it, so the released sum keeps its noise")
        _check_delta(f"{prefix}.target_delta", self.target_delta, num_users, "(number of users)")
        _check_accountant(f"{prefix}.accountant", self.accountant)
        if not self.target_epsilon > 0:
            raise ConfigError(f"{prefix}.target_epsilon: the budget must be positive, got {self.target_epsilon}")
        return self

    def check_budget(self, rounds: int) -> None:
        """Refuses a run whose ``rounds`` could spend more than ``target_epsilon``, naming the noise it needs.

        The planned figure is the claimed, unamplified one with every device in every round:
        what the ledger will state at most, whatever the sampling turns out to be.
        """
        if not math.isfinite(self.target_epsilon):
            return
        # Imported here: the accountants import Opacus, which costs seconds.
        from recsys_core.privacy.accountant import ScheduleEntry, compute_epsilon, noise_multiplier_for_budget

        planned = compute_epsilon([ScheduleEntry(self.noise_multiplier, 1.0, rounds)], self.target_delta,
                                  self.accountant)
        if planned > self.target_epsilon:
            needed = noise_multiplier_for_budget(target_epsilon=self.target_epsilon, delta=self.target_delta,
                                                 sampling_rate=1.0, steps=rounds, accountant=self.accountant)
            raise ConfigError(
                f"{SECTION}.user_level.target_epsilon: {rounds} rounds at noise_multiplier {self.noise_multiplier:g} "
                f"can spend epsilon {planned:.3g} at delta {self.target_delta:g} ({self.accountant}, a device in every "
                f"round, no amplification), above the budget {self.target_epsilon:g}; raise "
                f"privacy.user_level.noise_multiplier to at least {math.ceil(needed * 1e4) / 1e4:g} (rounded up) or "
                f"run fewer rounds")


@dataclass(frozen=True)
class PrivacyConfig:
    """Both privacy modes; either, both or neither may be enabled."""

    local: LocalPrivacyConfig = field(default_factory=LocalPrivacyConfig)
    user_level: UserLevelPrivacyConfig = field(default_factory=UserLevelPrivacyConfig)

    #: Where DP noise comes from: "os_entropy" (private), or "run_seed" for exact replays only (NOT private;
    #: recsys_core/privacy/secrets.py).
    noise_source: NoiseSource = "os_entropy"

    @property
    def enabled(self) -> bool:
        return self.local.enabled or self.user_level.enabled

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PrivacyConfig:
        """Builds from the ``[privacy]`` table; unknown keys and wrong types raise :class:`ConfigError`."""
        return dataclass_from_dict(cls, values, prefix=f"{SECTION}.", finite=True)

    def validate(
        self,
        num_users: int | None = None,
        min_local_examples: int | None = None,
        devices_per_round: int | None = None,
    ) -> PrivacyConfig:
        """Checks the enabled sections; the optional counts enable the delta and survivor checks.

        ``num_users``: clients in the federation (user-level delta must be below its inverse).
        ``min_local_examples``: the fewest training examples on any device (local delta likewise).
        """
        if self.local.enabled:
            self.local.validate(min_local_examples=min_local_examples)
        if self.user_level.enabled:
            self.user_level.validate(num_users=num_users, devices_per_round=devices_per_round)
        return self
