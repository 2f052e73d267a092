"""Secure aggregation maths (after SecAgg, Bonawitz et al. 2017, and SecAgg+, Bell et al. 2020).

Plain functions shared by the server and the devices, with no Flower in them:

* :mod:`.shamir`: Shamir secret sharing over the prime field GF(2^521 - 1).
* :mod:`.keys`: X25519 key agreement and HKDF-SHA256 round keys; AES-GCM for shares in transit.
* :mod:`.masks`: ChaCha20 keystreams expanded into mask vectors.
* :mod:`.fixed_point`: clipping and fixed-point quantisation into a modulus that cannot overflow.
* :mod:`.neighbours`: the sparse neighbour graph of a round (logarithmic degree).
* :mod:`.protocol`: the device's and the server's steps of one round.

docs/secure-aggregation.md describes the protocol and what each party sees.
"""
