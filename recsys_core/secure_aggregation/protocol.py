"""One round of secure aggregation: the device's two steps and the server's unmasking.

Two exchanges per round, on top of a one-time registration of each device's long-term
X25519 public key:

1. **Masked contribution** (sent with the training reply). The device encodes its
   floats (:class:`~.fixed_point.FixedPointCodec`) and adds, modulo 2^bits, a self mask
   from a fresh 256-bit seed ``b`` and, for each neighbour ``v``, the pairwise mask from
   the round key it shares with ``v`` (added if its node id is lower, subtracted if
   higher, so pairwise masks cancel in the sum). It Shamir-shares ``b`` among its
   neighbours (threshold ``t``), encrypts each share for its neighbour (AES-GCM, bound to
   run, round, sender and receiver) and commits to ``b`` with SHA-256.
2. **Unmasking.** The server tells each device which of its neighbours' contributions
   arrived (survivors) and which did not (dropped), and forwards the survivors' encrypted
   shares. The device returns the decrypted shares of survivors' ``b`` and, for each
   dropped neighbour, the one round's pairwise mask seed. It refuses a request that asks
   for both about the same neighbour: with both, the server could unmask that neighbour.

The server subtracts every survivor's self mask (recovered from ``t`` shares and checked
against the commitment) and the pairwise masks of survivors with dropped neighbours,
and decodes the sum. It learns the sum over survivors and nothing else about a single
device's vector. Revealing one round's pairwise seed reveals nothing about other rounds
(each is an independent HKDF output), so keys are reused across rounds.

A device that sent its contribution and then drops during unmasking is still counted
(its ``b`` comes from its neighbours' shares), unless it has a dropped neighbour: only
the two of them knew that pairwise seed, so the round fails loudly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from recsys_core.secure_aggregation.fixed_point import FixedPointCodec
from recsys_core.secure_aggregation.keys import (
    SEED_BYTES,
    DeviceKeys,
    ShareDecryptionError,
    decrypt_share,
    encrypt_share,
    round_key,
    share_context,
)
from recsys_core.secure_aggregation.masks import add_mod, mask_vector, modulus_dtype, subtract_mod
from recsys_core.secure_aggregation.shamir import Share, recover_secret, split_secret


class SecureAggregationError(RuntimeError):
    """The round cannot be unmasked (too few shares, a missing seed, a wrong sum): it fails, the model is unchanged."""


class InvalidContributionError(ValueError):
    """A device's masked contribution is malformed; the server treats that device as dropped."""


@dataclass(frozen=True)
class RoundSetup:
    """What the server tells a device about the round: who it is, its neighbours and the rules."""

    run_id: str
    server_round: int
    node_id: int
    #: Neighbour node id -> its registered X25519 public key.
    neighbour_keys: Mapping[int, bytes]
    threshold: int

    def __post_init__(self) -> None:
        if self.node_id in self.neighbour_keys:
            raise ValueError("a device cannot be its own neighbour")
        if not len(self.neighbour_keys) // 2 < self.threshold <= len(self.neighbour_keys):
            # A majority: two disjoint sets of neighbours could otherwise each rebuild the self mask, one
            # told the device survived and the other that it dropped.
            raise ValueError(f"threshold must be a majority of the {len(self.neighbour_keys)} neighbours (above "
                             f"{len(self.neighbour_keys) // 2}, at most {len(self.neighbour_keys)}), got "
                             f"{self.threshold}")

    @property
    def neighbours(self) -> tuple[int, ...]:
        return tuple(sorted(self.neighbour_keys))


@dataclass(frozen=True)
class MaskedContribution:
    """What a device sends in step 1: everything about its update is inside ``masked``."""

    server_round: int
    masked: np.ndarray
    #: Neighbour node id -> its share of this device's self-mask seed, encrypted for it.
    encrypted_shares: Mapping[int, bytes]
    #: SHA-256 of the self-mask seed, to check the server's reconstruction.
    self_mask_commitment: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """What the server asks a surviving device in step 2."""

    server_round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    #: Survivor node id -> the share it encrypted for this device.
    encrypted_shares: Mapping[int, bytes]


@dataclass(frozen=True)
class UnmaskResponse:
    """A device's answer: shares of survivors' self masks, seeds of pairwise masks with dropped neighbours."""

    server_round: int
    self_mask_shares: Mapping[int, bytes]
    pairwise_seeds: Mapping[int, bytes]
    #: Survivor node id -> why its share was not accepted (forged, replayed, misaddressed).
    rejected_shares: Mapping[int, str] = field(default_factory=dict)


def mask_contribution(keys: DeviceKeys, setup: RoundSetup, values: np.ndarray,
                      codec: FixedPointCodec) -> MaskedContribution:
    """Step 1 on the device: encode, mask and share the self-mask seed."""
    encoded = codec.encode(values)
    self_seed = os.urandom(SEED_BYTES)
    masked = add_mod(encoded, mask_vector(self_seed, codec.length, codec.modulus_bits), codec.modulus_bits)
    shares = split_secret(self_seed, setup.threshold, [holder_x(neighbour) for neighbour in setup.neighbours])
    encrypted: dict[int, bytes] = {}
    for neighbour, share in zip(setup.neighbours, shares):
        secret = keys.agree(setup.neighbour_keys[neighbour])
        pairwise = mask_vector(_pairwise_seed(secret, setup, neighbour), codec.length, codec.modulus_bits)
        masked = (add_mod if setup.node_id < neighbour else subtract_mod)(masked, pairwise, codec.modulus_bits)
        key = round_key(secret, "share-encryption", setup.run_id, setup.server_round, setup.node_id, neighbour)
        context = share_context(setup.run_id, setup.server_round, setup.node_id, neighbour)
        encrypted[neighbour] = encrypt_share(key, share.to_bytes(), context)
    return MaskedContribution(setup.server_round, masked, encrypted, hashlib.sha256(self_seed).digest())


def check_contribution(contribution: MaskedContribution, server_round: int, neighbours: tuple[int, ...],
                       codec: FixedPointCodec) -> None:
    """Raises :class:`InvalidContributionError` naming what is wrong; the server calls it on every reply."""
    if contribution.server_round != server_round:
        raise InvalidContributionError(f"contribution for round {contribution.server_round}, but this is round "
                                  f"{server_round} (replayed or late)")
    masked = contribution.masked
    dtype = modulus_dtype(codec.modulus_bits)
    if not isinstance(masked, np.ndarray) or masked.dtype != dtype or masked.shape != (codec.length,):
        shape = getattr(masked, "shape", None)
        kind = getattr(masked, "dtype", type(masked).__name__)
        raise InvalidContributionError(f"masked vector must be {codec.length} values of {np.dtype(dtype).name}, got "
                                  f"shape {shape} of {kind}")
    if codec.modulus_bits < 8 * masked.dtype.itemsize and masked.size and int(masked.max()) >> codec.modulus_bits:
        raise InvalidContributionError(f"masked values must lie below 2^{codec.modulus_bits}")
    if set(contribution.encrypted_shares) != set(neighbours):
        raise InvalidContributionError(f"shares must go to exactly the neighbours {list(neighbours)}, got "
                                  f"{sorted(contribution.encrypted_shares)}")
    if len(contribution.self_mask_commitment) != hashlib.sha256().digest_size:
        raise InvalidContributionError("the self-mask commitment must be a SHA-256 digest (32 bytes)")


def answer_unmask(keys: DeviceKeys, setup: RoundSetup, request: UnmaskRequest) -> UnmaskResponse:
    """Step 2 on the device: reveal survivors' shares and dropped neighbours' pairwise seeds, never both."""
    if request.server_round != setup.server_round:
        raise ValueError(f"unmask request for round {request.server_round}, but this device is in round "
                         f"{setup.server_round}")
    survivors, dropped = set(request.survivors), set(request.dropped)
    if survivors & dropped:
        raise ValueError(f"the server asks to unmask {sorted(survivors & dropped)} both as survivors and as "
                         "dropped; refusing (that would reveal their updates)")
    strangers = (survivors | dropped) - set(setup.neighbours)
    if strangers:
        raise ValueError(f"the server asks about {sorted(strangers)}, which are not this device's neighbours")
    if len(survivors) < setup.threshold:
        # With fewer than t survivors no round can be unmasked honestly; a server that claims so is
        # after the pairwise seeds, which with a self mask would expose a neighbour's update.
        raise ValueError(f"the server names {len(survivors)} surviving neighbours, fewer than the threshold "
                         f"{setup.threshold}; refusing to reveal anything")
    self_mask_shares: dict[int, bytes] = {}
    rejected: dict[int, str] = {}
    for sender in sorted(survivors):
        ciphertext = request.encrypted_shares.get(sender)
        if ciphertext is None:
            rejected[sender] = "no share forwarded"
            continue
        secret = keys.agree(setup.neighbour_keys[sender])
        key = round_key(secret, "share-encryption", setup.run_id, setup.server_round, sender, setup.node_id)
        try:
            plaintext = decrypt_share(key, ciphertext, share_context(setup.run_id, setup.server_round, sender,
                                                                     setup.node_id))
            share = Share.from_bytes(plaintext)
        except (ShareDecryptionError, ValueError) as error:
            rejected[sender] = str(error)
            continue
        if share.x != holder_x(setup.node_id):
            rejected[sender] = f"share addressed to holder {share.x}, not this device"
            continue
        self_mask_shares[sender] = plaintext
    pairwise_seeds = {neighbour: _pairwise_seed(keys.agree(setup.neighbour_keys[neighbour]), setup, neighbour)
                      for neighbour in sorted(dropped)}
    return UnmaskResponse(setup.server_round, self_mask_shares, pairwise_seeds, rejected)


def unmask_requests(contributions: Mapping[int, MaskedContribution], graph: Mapping[int, tuple[int, ...]],
                    server_round: int) -> dict[int, UnmaskRequest]:
    """The server's step-2 message to each device whose contribution arrived."""
    requests = {}
    for node in sorted(contributions):
        survivors = tuple(neighbour for neighbour in graph[node] if neighbour in contributions)
        dropped = tuple(neighbour for neighbour in graph[node] if neighbour not in contributions)
        shares = {sender: contributions[sender].encrypted_shares[node] for sender in survivors}
        requests[node] = UnmaskRequest(server_round, survivors, dropped, shares)
    return requests


def unmask_sum(
    contributions: Mapping[int, MaskedContribution],
    graph: Mapping[int, tuple[int, ...]],
    responses: Mapping[int, UnmaskResponse],
    threshold: int,
    codec: FixedPointCodec,
) -> np.ndarray:
    """The server's last step: the decoded float sum over the devices in ``contributions``.

    ``graph`` is the round's neighbour graph over every device that was sent the round;
    those without a contribution are the dropped ones. Raises
    :class:`SecureAggregationError` naming the device whose masks cannot be removed.
    """
    survivors = sorted(contributions)
    if not survivors:
        raise SecureAggregationError("no contributions to aggregate")
    for node in survivors:
        try:
            check_contribution(contributions[node], contributions[node].server_round, graph[node], codec)
        except InvalidContributionError as error:
            raise SecureAggregationError(f"device {node}: {error}") from None
    bits = codec.modulus_bits
    total = np.zeros(codec.length, dtype=modulus_dtype(bits))
    for node in survivors:
        total = add_mod(total, contributions[node].masked, bits)
    for node in survivors:
        seed = recover_self_seed(node, contributions[node], graph, responses, threshold)
        total = subtract_mod(total, mask_vector(seed, codec.length, bits), bits)
    for node in survivors:
        for neighbour in graph[node]:
            if neighbour in contributions:
                continue
            response = responses.get(node)
            if response is None or neighbour not in response.pairwise_seeds:
                raise SecureAggregationError(
                    f"device {node} sent its contribution but not its pairwise seed with dropped neighbour "
                    f"{neighbour}; nobody else holds it, so the round cannot be unmasked")
            pairwise = mask_vector(response.pairwise_seeds[neighbour], codec.length, bits)
            total = (subtract_mod if node < neighbour else add_mod)(total, pairwise, bits)
    return codec.decode_sum(total, len(survivors))


def recover_self_seed(node: int, contribution: MaskedContribution, graph: Mapping[int, tuple[int, ...]],
                      responses: Mapping[int, UnmaskResponse], threshold: int) -> bytes:
    """A survivor's self-mask seed from its neighbours' revealed shares, checked against its commitment."""
    shares = []
    for holder in graph[node]:
        response = responses.get(holder)
        if response is not None and node in response.self_mask_shares:
            try:
                share = Share.from_bytes(response.self_mask_shares[node])
            except ValueError:
                continue  # a malformed share counts as missing
            if share.x == holder_x(holder):
                shares.append(share)
    if len(shares) < threshold:
        raise SecureAggregationError(f"device {node}: {len(shares)} shares of its self mask arrived, "
                                     f"{threshold} are needed; the round cannot be unmasked")
    try:
        seed = recover_secret(shares, SEED_BYTES)
    except ValueError:
        seed = b""
    if hashlib.sha256(seed).digest() != contribution.self_mask_commitment:
        raise SecureAggregationError(f"device {node}: its self mask recovered from {len(shares)} shares does not "
                                     "match its commitment (a wrong share was revealed)")
    return seed


def _pairwise_seed(secret: bytes, setup: RoundSetup, neighbour: int) -> bytes:
    return round_key(secret, "mask", setup.run_id, setup.server_round, setup.node_id, neighbour)


def holder_x(node_id: int) -> int:
    """The x coordinate of the share a device holds: its node id plus one (never 0, the secret's)."""
    return node_id + 1
