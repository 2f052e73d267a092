"""Mask vectors: a ChaCha20 keystream from a 256-bit seed, read as unsigned integers.

Every mask in the protocol comes from here, and ChaCha20 (a stream cipher, via
``cryptography``/OpenSSL) is the only generator: no seed is folded to fewer bits and
no statistical generator (numpy's, ``random``) takes part.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from recsys_core.secure_aggregation.keys import SEED_BYTES

#: ChaCha20 in ``cryptography`` takes a 16-byte nonce (counter and nonce); the seed is
#: used for one mask only, so a fixed nonce is safe.
_NONCE = bytes(16)


def mask_vector(seed: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """``length`` uniform integers in [0, 2^modulus_bits), as uint32 or uint64."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes (256 bits), got {len(seed)}")
    dtype = modulus_dtype(modulus_bits)
    width = np.dtype(dtype).itemsize
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(length * width))
    values = np.frombuffer(stream, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype, copy=True)
    if modulus_bits < 8 * width:
        values &= dtype((1 << modulus_bits) - 1)
    return values


def modulus_dtype(modulus_bits: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type that holds values below 2^modulus_bits."""
    if not 8 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be between 8 and 64, got {modulus_bits}")
    return np.uint32 if modulus_bits <= 32 else np.uint64


def add_mod(a: np.ndarray, b: np.ndarray, modulus_bits: int) -> np.ndarray:
    """(a + b) mod 2^modulus_bits; unsigned wrap-around does the reduction for 32 and 64 bits."""
    total = a + b
    return _reduce(total, modulus_bits)


def subtract_mod(a: np.ndarray, b: np.ndarray, modulus_bits: int) -> np.ndarray:
    """(a - b) mod 2^modulus_bits."""
    return _reduce(a - b, modulus_bits)


def _reduce(values: np.ndarray, modulus_bits: int) -> np.ndarray:
    width_bits = 8 * values.dtype.itemsize
    if modulus_bits < width_bits:
        values &= values.dtype.type((1 << modulus_bits) - 1)
    return values
