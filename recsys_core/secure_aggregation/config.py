"""The secure-aggregation settings of a run (the ``[secure_aggregation]`` config section)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from recsys_core.errors import ConfigError
from recsys_core.secure_aggregation.fixed_point import EXACT_FLOAT_BITS

SECTION = "secure_aggregation"
#: Server strategies whose step needs only the sum of the updates (the server never sees one update).
SUPPORTED_STRATEGIES = ("fedavg", "fedprox", "fedadam")


@dataclass(frozen=True)
class SecureAggregationConfig:
    """Masked, quantised updates that the server can only add up."""

    enabled: bool = False
    #: The fraction of a round's devices that may drop after being sampled without failing the round
    #: (sets the neighbour graph's degree; :func:`~recsys_core.secure_aggregation.neighbours.plan_degree`).
    dropout_tolerance: float = 0.1
    #: Neighbours per device; 0 plans it from ``dropout_tolerance`` (O(log n)).
    degree: int = 0
    #: Each coordinate of a device's weighted update is clipped to [-range, range] before quantisation.
    #: Under user-level DP the range is set from the clip norm and the noise instead.
    update_clip_range: float = 10.0
    #: A device's training loss is clipped to [0, range] before it is added in.
    loss_clip_range: float = 100.0
    #: Masked values are integers modulo 2^modulus_bits (32: uint32 on the wire, as compact as float32).
    modulus_bits: int = 32

    def validate(self) -> SecureAggregationConfig:
        if not self.enabled:
            return self
        if not 0 <= self.dropout_tolerance < 0.5:
            raise ConfigError(f"{SECTION}.dropout_tolerance: must be in [0, 0.5), got {self.dropout_tolerance}")
        if self.degree < 0:
            raise ConfigError(f"{SECTION}.degree: must be 0 (planned) or positive, got {self.degree}")
        for key in ("update_clip_range", "loss_clip_range"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{SECTION}.{key}: must be positive and finite, got {value}")
        if not 16 <= self.modulus_bits <= EXACT_FLOAT_BITS:
            raise ConfigError(f"{SECTION}.modulus_bits: must be between 16 and {EXACT_FLOAT_BITS}, got "
                              f"{self.modulus_bits} (above 53 bits the float64 fixed-point arithmetic is no longer "
                              "exact and a sum could wrap around)")
        return self
