"""Fixed-point quantisation: floats clipped to explicit ranges, integers summed without overflow.

Each coordinate i has a clipping range [-r_i, r_i]. A value is clipped, shifted to
[0, 2 r_i] and rounded to the nearest of ``levels + 1`` points, so one client's integer
lies in [0, levels]. ``levels`` is the largest that keeps the sum over ``max_devices``
clients below the modulus 2^modulus_bits: the masked sum can never wrap around, and a
sum above ``clients * levels`` proves that some client sent a value out of range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_core.secure_aggregation.masks import modulus_dtype

#: float64 represents every integer up to 2^53 exactly: the encoding and decoding stay exact below it.
EXACT_FLOAT_BITS = 53


class OutOfRangeSumError(ValueError):
    """The unmasked sum exceeds what in-range clients can produce: some client cheated or a share was wrong."""


@dataclass(frozen=True)
class FixedPointCodec:
    """Encodes one client's floats and decodes the sum over clients."""

    clip_ranges: np.ndarray
    max_devices: int
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        ranges = np.asarray(self.clip_ranges, dtype=np.float64)
        if ranges.ndim != 1 or not np.all(np.isfinite(ranges)) or np.any(ranges <= 0):
            raise ValueError("clip_ranges must be a 1-D array of positive, finite ranges")
        modulus_dtype(self.modulus_bits)
        if self.modulus_bits > EXACT_FLOAT_BITS:
            raise ValueError(f"modulus_bits = {self.modulus_bits}: above {EXACT_FLOAT_BITS} the float64 encoding "
                             "rounds integers and a sum can wrap around")
        if self.max_devices < 1 or self.levels < 1:
            raise ValueError(f"{self.max_devices} clients do not fit a {self.modulus_bits}-bit modulus")
        object.__setattr__(self, "clip_ranges", ranges)

    @property
    def length(self) -> int:
        return int(self.clip_ranges.shape[0])

    @property
    def levels(self) -> int:
        """Quantisation steps per coordinate: max_devices * levels < 2^modulus_bits."""
        return ((1 << self.modulus_bits) - 1) // self.max_devices

    def step(self) -> np.ndarray:
        """The width of one quantisation step per coordinate (2 r / levels)."""
        return 2.0 * self.clip_ranges / self.levels

    def encode(self, values: np.ndarray) -> np.ndarray:
        """One client's values as integers in [0, levels] (clipped to the ranges first)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.length,):
            raise ValueError(f"expected {self.length} values, got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("values to encode must be finite")
        clipped = np.clip(values, -self.clip_ranges, self.clip_ranges)
        scaled = (clipped + self.clip_ranges) / (2.0 * self.clip_ranges) * self.levels
        return np.rint(scaled).astype(modulus_dtype(self.modulus_bits))

    def decode_sum(self, total: np.ndarray, clients: int) -> np.ndarray:
        """The float sum over ``clients`` encoded vectors; each coordinate within clients * step / 2."""
        if not 1 <= clients <= self.max_devices:
            raise ValueError(f"clients must be between 1 and {self.max_devices}, got {clients}")
        total = np.asarray(total)
        if total.shape != (self.length,):
            raise ValueError(f"expected a sum of {self.length} values, got shape {total.shape}")
        above = np.flatnonzero(total.astype(np.uint64) > np.uint64(clients * self.levels))
        if above.size:
            raise OutOfRangeSumError(f"{above.size} coordinates of the sum (first: {int(above[0])}) exceed what "
                                f"{clients} in-range clients can send: a client sent out-of-range values or "
                                "a revealed share was wrong")
        return total.astype(np.float64) / self.levels * 2.0 * self.clip_ranges - clients * self.clip_ranges

    def max_error(self, clients: int) -> np.ndarray:
        """The bound on |decoded sum - clipped float sum| per coordinate (half a step per client)."""
        return clients * self.step() / 2.0
