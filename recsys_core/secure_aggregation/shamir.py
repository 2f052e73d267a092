"""Shamir secret sharing (t-of-n) over the prime field GF(2^521 - 1).

The field is far larger than the 2^128 the protocol needs: a 256-bit seed fits in one
field element, so a secret is one polynomial and a share is one 66-byte number. The
polynomial's coefficients come from :mod:`secrets` (the OS's cryptographic generator).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

#: The Mersenne prime 2^521 - 1.
PRIME = (1 << 521) - 1
#: Bytes of one field element.
ELEMENT_BYTES = (PRIME.bit_length() + 7) // 8
#: Bytes of a share's x coordinate (a holder's 64-bit node id plus one).
X_BYTES = 9


@dataclass(frozen=True)
class Share:
    """One point (x, f(x)) of the sharing polynomial; x identifies the holder and is never 0."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(X_BYTES, "big") + self.y.to_bytes(ELEMENT_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != X_BYTES + ELEMENT_BYTES:
            raise ValueError(f"a share is {X_BYTES + ELEMENT_BYTES} bytes, got {len(data)}")
        share = cls(int.from_bytes(data[:X_BYTES], "big"), int.from_bytes(data[X_BYTES:], "big"))
        if not 0 < share.x < PRIME or not 0 <= share.y < PRIME:
            raise ValueError("share lies outside the field")
        return share


def split_secret(secret: bytes, threshold: int, holders: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` at the x coordinates ``holders``; any ``threshold`` of them recover it.

    ``secret`` is at most 64 bytes (it must be a field element). Fewer than ``threshold``
    shares reveal nothing about it: they are uniform in the field.
    """
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold must be between 1 and the {len(holders)} holders, got {threshold}")
    if len(set(holders)) != len(holders) or any(not 0 < x < 1 << (8 * X_BYTES) for x in holders):
        raise ValueError("holders must be distinct x coordinates between 1 and 2^72")
    if len(secret) > 64:
        raise ValueError(f"a secret is at most 64 bytes, got {len(secret)}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in holders]


def recover_secret(shares: Sequence[Share], secret_bytes: int) -> bytes:
    """The secret from at least ``threshold`` distinct shares (Lagrange interpolation at 0).

    With fewer shares than the threshold the result is a wrong secret, not an error:
    callers check it against a commitment (:func:`recsys_core.secure_aggregation.protocol`).
    """
    if not shares:
        raise ValueError("no shares to recover a secret from")
    xs = [share.x for share in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("shares must come from distinct holders")
    secret = 0
    for i, share in enumerate(shares):
        numerator, denominator = 1, 1
        for j, other in enumerate(xs):
            if i != j:
                numerator = numerator * (-other) % PRIME
                denominator = denominator * (share.x - other) % PRIME
        secret = (secret + share.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * secret_bytes):
        raise ValueError("the recovered value does not fit the secret's size: wrong or too few shares")
    return secret.to_bytes(secret_bytes, "big")


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value
