"""The device's side of secure aggregation: its key pair, masking a reply, answering the unmask request.

The long-term X25519 key pair lives in ``Context.state`` (generated on first use); the
server registers the public half when it discovers the node, with the device's endorsement
of it when the device holds a certified identity (:func:`pinned_identity`). Such a device
checks every neighbour key the server relays against the authority it pins before masking. The round's settings and
neighbour keys are kept in ``Context.state`` between the masking and unmasking steps,
so the device answers the unmask request from its own copy, not the server's, and
erased when it has answered: it answers once per contribution. It never masks twice
under one label (exchange id and round). These live in ``Context.state``, which a node
restart clears; the server's exchange id carries a fresh nonce per server process, so an
honest server never repeats a label across restarts (a lying one could, to a restarted device).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.node_config import node_partition_id
from recsys_core.federated.wire import (
    CONFIG_RECORD,
    DEVICE_AUTHORITY_NODE_KEY,
    DEVICE_STATE_DIR_ENV,
    DEVICE_STATE_DIR_NODE_KEY,
    IDENTITY_PATH_NODE_KEY,
    PUBLIC_KEY_KEY,
    SECURE_ARRAYS_RECORD,
    SECURE_CONFIG_RECORD,
)
from recsys_core.secure_aggregation.identity import (
    AUTHORITY_FILE,
    SIMULATED_IDENTITIES,
    DeviceIdentity,
    IdentityError,
    authenticate_neighbours,
    read_authority_key,
    simulated_identity_path,
)
from recsys_core.secure_aggregation.keys import DeviceKeys
from recsys_core.secure_aggregation.protocol import RoundSetup, answer_unmask, mask_contribution
from recsys_core.secure_aggregation.wire import (
    ExchangeSettings,
    decode_endorsements,
    decode_neighbours,
    decode_unmask_request,
    encode_contribution,
    encode_neighbours,
    encode_unmask_response,
)

KEYS_STATE = "fedrec.secure-aggregation-key"
ROUND_STATE = "fedrec.secure-aggregation-round"
ROUND_NEIGHBOURS_STATE = "fedrec.secure-aggregation-neighbours"
#: Exchange id -> the last round this device masked under it.
LABELS_STATE = "fedrec.secure-aggregation-labels"


class KeyChangedError(RuntimeError):
    """The server holds another public key for this device (it restarted): it must register again."""


def device_keys(context: Context) -> DeviceKeys:
    """This device's long-term key pair, made on first use."""
    if KEYS_STATE not in context.state.config_records:
        context.state[KEYS_STATE] = ConfigRecord({"private-key": DeviceKeys.generate().private_key})
    return DeviceKeys(cast(bytes, context.state.config_records[KEYS_STATE]["private-key"]))


def pinned_identity(context: Context) -> tuple[DeviceIdentity, bytes] | None:
    """This device's certified identity and the device authority it pins, or None when it has none.

    A SuperNode names both in its node config (``identity-path``, ``device-authority``); a simulated
    device finds them where its launcher enrolled it, under its state folder. A device that pins
    an authority checks every neighbour's key against it before masking.
    """
    config = context.node_config
    if DEVICE_AUTHORITY_NODE_KEY in config:
        authority = read_authority_key(str(config[DEVICE_AUTHORITY_NODE_KEY]))
        if IDENTITY_PATH_NODE_KEY not in config:
            raise IdentityError(f"this SuperNode pins a device authority but its node config names no "
                                f"{IDENTITY_PATH_NODE_KEY}; add --node-config '{IDENTITY_PATH_NODE_KEY}=\"FILE\"' "
                                "(fedrec deploy certs wrote supernode-N.identity)")
        return DeviceIdentity.read(str(config[IDENTITY_PATH_NODE_KEY]), authority), authority
    state_dir = config.get(DEVICE_STATE_DIR_NODE_KEY) or os.environ.get(DEVICE_STATE_DIR_ENV)
    enrolled = Path(str(state_dir)) / SIMULATED_IDENTITIES if state_dir else None
    if enrolled is None or not (enrolled / AUTHORITY_FILE).exists():
        return None
    authority = read_authority_key(enrolled / AUTHORITY_FILE)
    return DeviceIdentity.read(simulated_identity_path(enrolled, node_partition_id(context)), authority), authority


def key_registration(context: Context) -> dict[str, bytes]:
    """What the server registers for this device: its agreement key and, when enrolled, what vouches for it."""
    public_key = device_keys(context).public_key
    pinned = pinned_identity(context)
    endorsement = {} if pinned is None else pinned[0].endorse(context.node_id, public_key).to_wire()
    return {PUBLIC_KEY_KEY: public_key, **endorsement}


def is_secure(message: Message) -> bool:
    return SECURE_CONFIG_RECORD in message.content


def exchange_settings(message: Message) -> ExchangeSettings:
    return ExchangeSettings.from_wire(dict(message.content[SECURE_CONFIG_RECORD]))


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The numpy arrays of a Flower ``ArrayRecord``."""
    return {name: array.numpy() for name, array in record.items()}


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """A Flower ``ArrayRecord`` of numpy arrays."""
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def masked_record(message: Message, context: Context, values: dict[str, np.ndarray]) -> ArrayRecord:
    """Step 1: the device's values packed by the round's layout, masked, with its encrypted shares.

    Raises :class:`KeyChangedError` when the server's copy of this device's key is stale.
    """
    keys = device_keys(context)
    settings = exchange_settings(message)
    if settings.registered_key != keys.public_key:
        raise KeyChangedError("the server holds another public key for this device")
    arrays = record_arrays(message.content.array_records[SECURE_ARRAYS_RECORD])
    neighbours = decode_neighbours(arrays)
    pinned = pinned_identity(context)
    if pinned is not None:  # before any secret is agreed with a key the server relayed
        identity, authority = pinned
        authenticate_neighbours(authority, identity.public_key, neighbours, decode_endorsements(arrays))
    setup = RoundSetup(settings.exchange_id, settings.server_round, context.node_id, neighbours, settings.threshold)
    claim_label(context, settings.exchange_id, settings.server_round)
    codec = settings.layout.codec(settings.max_devices, settings.modulus_bits)
    contribution = mask_contribution(keys, setup, settings.layout.pack(values), codec)
    context.state[ROUND_STATE] = ConfigRecord({"exchange-id": settings.exchange_id, "round": settings.server_round,
                                               "threshold": settings.threshold})
    context.state[ROUND_NEIGHBOURS_STATE] = array_record(encode_neighbours(neighbours))
    return array_record(encode_contribution(contribution))


def claim_label(context: Context, exchange_id: str, server_round: int) -> None:
    """Records that this device masks under ``(exchange_id, server_round)``; refuses a label it has used.

    The label keys every pairwise keystream: masking two vectors under one label would let the
    server subtract them and learn their difference. Rounds of an exchange must increase.
    """
    used = context.state.config_records.get(LABELS_STATE, ConfigRecord())
    last = cast("int | None", used.get(exchange_id))
    if last is not None and server_round <= last:
        raise ValueError(f"refusing to mask for {exchange_id!r} round {server_round}: this device already masked "
                         f"for round {last} of it (a reused label would reveal the difference of two updates)")
    used[exchange_id] = server_round
    context.state[LABELS_STATE] = used


def add_masked(reply: RecordDict, message: Message, context: Context, values: dict[str, np.ndarray]) -> None:
    """Adds the masked contribution to ``reply``; a device whose key the server no longer holds sends its new key."""
    try:
        reply[SECURE_ARRAYS_RECORD] = masked_record(message, context, values)
    except KeyChangedError:
        reply.config_records[CONFIG_RECORD].update(key_registration(context))


def unmask_record(message: Message, context: Context) -> ArrayRecord:
    """Step 2: shares of surviving neighbours' self masks and seeds shared with dropped ones."""
    if ROUND_STATE not in context.state.config_records:
        raise RuntimeError("unmask request for a device that sent no masked contribution")
    stored = context.state.config_records[ROUND_STATE]
    asked = str(message.content[SECURE_CONFIG_RECORD].get("exchange-id", "")) \
        if SECURE_CONFIG_RECORD in message.content else ""
    if asked != str(stored["exchange-id"]):
        raise ValueError(f"unmask request for exchange {asked!r}, but this device last masked for "
                         f"{stored['exchange-id']!r}")
    neighbours = decode_neighbours(record_arrays(context.state.array_records[ROUND_NEIGHBOURS_STATE]))
    setup = RoundSetup(str(stored["exchange-id"]), cast(int, stored["round"]), context.node_id, neighbours,
                       cast(int, stored["threshold"]))
    request = decode_unmask_request(record_arrays(message.content.array_records[SECURE_ARRAYS_RECORD]))
    # Answered once: a second request for the same contribution (say "T survived", then "T dropped")
    # would give the server both halves of a neighbour's masks.
    del context.state[ROUND_STATE]
    del context.state[ROUND_NEIGHBOURS_STATE]
    response = answer_unmask(device_keys(context), setup, request)
    return array_record(encode_unmask_response(response))
