"""The protocol's messages as flat numpy arrays, the form Flower's ``ArrayRecord`` carries.

Node ids are unsigned 64-bit (Flower's), so they travel as ``uint64`` arrays; keys,
encrypted shares and seeds are fixed-size byte strings and travel as ``uint8`` rows.
Decoding checks every field's type and shape and raises :class:`ValueError` naming the
field, so a malformed message is refused before it reaches the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_core.secure_aggregation.identity import IDENTITY_KEY_BYTES, SIGNATURE_BYTES, KeyEndorsement
from recsys_core.secure_aggregation.keys import NONCE_BYTES, PUBLIC_KEY_BYTES, SEED_BYTES
from recsys_core.secure_aggregation.layout import VectorLayout
from recsys_core.secure_aggregation.protocol import MaskedContribution, UnmaskRequest, UnmaskResponse
from recsys_core.secure_aggregation.shamir import ELEMENT_BYTES, X_BYTES

Arrays = dict[str, np.ndarray]
#: An AES-GCM encrypted share: nonce, the share, the 16-byte tag.
ENCRYPTED_SHARE_BYTES = NONCE_BYTES + X_BYTES + ELEMENT_BYTES + 16
SHARE_BYTES = X_BYTES + ELEMENT_BYTES
COMMITMENT_BYTES = 32


@dataclass(frozen=True)
class ExchangeSettings:
    """What the server sends with a secure exchange, beside the device's neighbours.

    ``exchange_id`` names the run, the process and the purpose (training, validation,
    test): with the round number it keys every mask, so no two vectors are ever masked
    with the same pairwise keystream.
    """

    exchange_id: str
    server_round: int
    threshold: int
    max_devices: int
    modulus_bits: int
    #: The public key the server holds for this device; a device whose key changed re-registers.
    registered_key: bytes
    layout: VectorLayout
    #: Training: a device's weight is its example count over this.
    weight_scale: float = 1.0

    def to_wire(self) -> dict[str, Any]:
        return {"exchange-id": self.exchange_id, "round": self.server_round, "threshold": self.threshold,
                "max-devices": self.max_devices, "modulus-bits": self.modulus_bits,
                "registered-key": self.registered_key, "weight-scale": float(self.weight_scale),
                **self.layout.to_wire()}

    @classmethod
    def from_wire(cls, values: Mapping[str, Any]) -> ExchangeSettings:
        try:
            return cls(str(values["exchange-id"]), int(values["round"]), int(values["threshold"]),
                       int(values["max-devices"]), int(values["modulus-bits"]), bytes(values["registered-key"]),
                       VectorLayout.from_wire(values), float(values["weight-scale"]))
        except KeyError as missing:
            raise ValueError(f"secure aggregation settings lack {missing}") from None


def node_ids(values: list[int] | tuple[int, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64).reshape(-1)


def byte_rows(rows: list[bytes], width: int) -> np.ndarray:
    if any(len(row) != width for row in rows):
        raise ValueError(f"every row must be {width} bytes")
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), width).copy()


def _field(arrays: Arrays, name: str, dtype: type, width: int | None = None) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"secure aggregation message lacks {name!r}")
    value = np.asarray(arrays[name])
    expected_ndim = 1 if width is None else 2
    if value.dtype != dtype or value.ndim != expected_ndim or (width is not None and value.shape[1] != width):
        shape = "(n,)" if width is None else f"(n, {width})"
        raise ValueError(f"secure aggregation field {name!r} must be {np.dtype(dtype).name} of shape {shape}, "
                         f"got {value.dtype} of shape {value.shape}")
    return value


def _ids(arrays: Arrays, name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in _field(arrays, name, np.uint64))


def _rows(arrays: Arrays, name: str, width: int, count: int) -> list[bytes]:
    rows = _field(arrays, name, np.uint8, width)
    if rows.shape[0] != count:
        raise ValueError(f"secure aggregation field {name!r} has {rows.shape[0]} rows, expected {count}")
    return [row.tobytes() for row in rows]


def encode_neighbours(neighbour_keys: Mapping[int, bytes],
                      endorsements: Mapping[int, KeyEndorsement] | None = None) -> Arrays:
    """The neighbours' ids and keys, and what vouches for each key when every neighbour has an endorsement."""
    ordered = sorted(neighbour_keys)
    arrays = {"neighbour-ids": node_ids(ordered),
              "neighbour-keys": byte_rows([neighbour_keys[n] for n in ordered], PUBLIC_KEY_BYTES)}
    if endorsements is not None and all(n in endorsements for n in ordered):
        arrays["neighbour-identity-keys"] = byte_rows([endorsements[n].identity_key for n in ordered],
                                                      IDENTITY_KEY_BYTES)
        arrays["neighbour-certificates"] = byte_rows([endorsements[n].certificate for n in ordered], SIGNATURE_BYTES)
        arrays["neighbour-key-signatures"] = byte_rows([endorsements[n].signature for n in ordered],
                                                       SIGNATURE_BYTES)
    return arrays


def decode_neighbours(arrays: Arrays) -> dict[int, bytes]:
    ids = _ids(arrays, "neighbour-ids")
    if len(set(ids)) != len(ids):
        raise ValueError("secure aggregation field 'neighbour-ids' repeats a node")
    return dict(zip(ids, _rows(arrays, "neighbour-keys", PUBLIC_KEY_BYTES, len(ids))))


def decode_endorsements(arrays: Arrays) -> dict[int, KeyEndorsement]:
    """Neighbour id -> the endorsement of its key; empty when the server sent none."""
    if "neighbour-identity-keys" not in arrays:
        return {}
    ids = _ids(arrays, "neighbour-ids")
    identity_keys = _rows(arrays, "neighbour-identity-keys", IDENTITY_KEY_BYTES, len(ids))
    certificates = _rows(arrays, "neighbour-certificates", SIGNATURE_BYTES, len(ids))
    signatures = _rows(arrays, "neighbour-key-signatures", SIGNATURE_BYTES, len(ids))
    return {node: KeyEndorsement(key, certificate, signature)
            for node, key, certificate, signature in zip(ids, identity_keys, certificates, signatures)}


def encode_contribution(contribution: MaskedContribution) -> Arrays:
    recipients = sorted(contribution.encrypted_shares)
    return {
        "masked": contribution.masked,
        "share-recipients": node_ids(recipients),
        "encrypted-shares": byte_rows([contribution.encrypted_shares[n] for n in recipients], ENCRYPTED_SHARE_BYTES),
        "commitment": np.frombuffer(contribution.self_mask_commitment, dtype=np.uint8).copy(),
        "round": np.array([contribution.server_round], dtype=np.uint64),
    }


def decode_contribution(arrays: Arrays) -> MaskedContribution:
    """The contribution in a reply; its length and range are checked later against the round's layout."""
    if "masked" not in arrays:
        raise ValueError("secure aggregation message lacks 'masked'")
    recipients = _ids(arrays, "share-recipients")
    shares = _rows(arrays, "encrypted-shares", ENCRYPTED_SHARE_BYTES, len(recipients))
    commitment = _field(arrays, "commitment", np.uint8).tobytes()
    return MaskedContribution(_round(arrays), np.asarray(arrays["masked"]), dict(zip(recipients, shares)),
                              commitment)


def _round(arrays: Arrays) -> int:
    server_round = _ids(arrays, "round")
    if len(server_round) != 1:
        raise ValueError("secure aggregation field 'round' must hold one number")
    return server_round[0]


def encode_unmask_request(request: UnmaskRequest) -> Arrays:
    return {
        "survivors": node_ids(request.survivors),
        "dropped": node_ids(request.dropped),
        "encrypted-shares": byte_rows([request.encrypted_shares[n] for n in request.survivors],
                                      ENCRYPTED_SHARE_BYTES),
        "round": np.array([request.server_round], dtype=np.uint64),
    }


def decode_unmask_request(arrays: Arrays) -> UnmaskRequest:
    survivors, dropped = _ids(arrays, "survivors"), _ids(arrays, "dropped")
    shares = _rows(arrays, "encrypted-shares", ENCRYPTED_SHARE_BYTES, len(survivors))
    return UnmaskRequest(_round(arrays), survivors, dropped, dict(zip(survivors, shares)))


def encode_unmask_response(response: UnmaskResponse) -> Arrays:
    senders, dropped = sorted(response.self_mask_shares), sorted(response.pairwise_seeds)
    return {
        "share-senders": node_ids(senders),
        "shares": byte_rows([response.self_mask_shares[n] for n in senders], SHARE_BYTES),
        "seed-neighbours": node_ids(dropped),
        "seeds": byte_rows([response.pairwise_seeds[n] for n in dropped], SEED_BYTES),
        "rejected-senders": node_ids(sorted(response.rejected_shares)),
        "round": np.array([response.server_round], dtype=np.uint64),
    }


def decode_unmask_response(arrays: Arrays) -> UnmaskResponse:
    senders, dropped = _ids(arrays, "share-senders"), _ids(arrays, "seed-neighbours")
    shares = _rows(arrays, "shares", SHARE_BYTES, len(senders))
    seeds = _rows(arrays, "seeds", SEED_BYTES, len(dropped))
    rejected = {sender: "rejected by the device" for sender in _ids(arrays, "rejected-senders")}
    return UnmaskResponse(_round(arrays), dict(zip(senders, shares)), dict(zip(dropped, seeds)), rejected)
