"""What a masked vector holds: named segments, each with its length and clipping range.

The server fixes the layout of a round and sends it with the round; a device packs its
floats in that order, so both sides agree on every coordinate without sending names
per value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_core.secure_aggregation.fixed_point import FixedPointCodec


@dataclass(frozen=True)
class Segment:
    name: str
    length: int
    clip_range: float


@dataclass(frozen=True)
class VectorLayout:
    """An ordered list of segments; :meth:`pack` and :meth:`unpack` convert to and from one flat vector."""

    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        names = [segment.name for segment in self.segments]
        if len(set(names)) != len(names):
            raise ValueError("segment names must be distinct")
        if any(segment.length < 1 or not segment.clip_range > 0 for segment in self.segments):
            raise ValueError("every segment needs a positive length and clipping range")

    @property
    def length(self) -> int:
        return sum(segment.length for segment in self.segments)

    def codec(self, max_devices: int, modulus_bits: int) -> FixedPointCodec:
        ranges = np.concatenate([np.full(segment.length, segment.clip_range) for segment in self.segments])
        return FixedPointCodec(ranges, max_devices, modulus_bits)

    def pack(self, values: Mapping[str, np.ndarray | float]) -> np.ndarray:
        """One float64 vector from a value per segment; raises naming a missing or mis-sized segment."""
        parts = []
        for segment in self.segments:
            if segment.name not in values:
                raise ValueError(f"no value for segment {segment.name!r}")
            part = np.asarray(values[segment.name], dtype=np.float64).reshape(-1)
            if part.size != segment.length:
                raise ValueError(f"segment {segment.name!r} has {part.size} values, expected {segment.length}")
            parts.append(part)
        return np.concatenate(parts) if parts else np.zeros(0)

    def unpack(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        if vector.shape != (self.length,):
            raise ValueError(f"expected {self.length} values, got shape {vector.shape}")
        result, start = {}, 0
        for segment in self.segments:
            result[segment.name] = vector[start:start + segment.length]
            start += segment.length
        return result

    def to_wire(self) -> dict[str, Any]:
        return {"segment-names": [s.name for s in self.segments],
                "segment-lengths": [s.length for s in self.segments],
                "segment-ranges": [float(s.clip_range) for s in self.segments]}

    @classmethod
    def from_wire(cls, values: Mapping[str, Any]) -> VectorLayout:
        names, lengths, ranges = (list(values[key]) for key in ("segment-names", "segment-lengths", "segment-ranges"))
        if not len(names) == len(lengths) == len(ranges):
            raise ValueError("segment names, lengths and ranges differ in number")
        return cls(tuple(Segment(str(n), int(length), float(r)) for n, length, r in zip(names, lengths, ranges)))
