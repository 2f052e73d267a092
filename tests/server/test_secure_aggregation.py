"""The server's secure exchange against in-process devices running the client's real handlers.

No Ray here: a fake grid hands each message to a device object that answers with
:mod:`client.secure_aggregation`, so hostile and failing devices are easy to write.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.secure_aggregation import add_masked, device_keys, key_registration, unmask_record
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.wire import (
    CONFIG_RECORD,
    DEVICE_AUTHORITY_NODE_KEY,
    IDENTITY_PATH_NODE_KEY,
    METRICS_RECORD,
    PUBLIC_KEY_KEY,
    SECURE_ARRAYS_RECORD,
    UNMASK_MESSAGE_TYPE,
)
from recsys_core.secure_aggregation.identity import DeviceAuthority, write_authority_key
from recsys_core.secure_aggregation.keys import SEED_BYTES, DeviceKeys, decrypt_share, round_key, share_context
from recsys_core.secure_aggregation.layout import Segment, VectorLayout
from recsys_core.secure_aggregation.masks import mask_vector, subtract_mod
from recsys_core.secure_aggregation.shamir import Share, recover_secret
from recsys_core.secure_aggregation.wire import decode_contribution
from server.secure_aggregation import SecureAggregator

LAYOUT = VectorLayout((Segment("update/w", 50, 1.0), Segment("weight", 1, 1.0)))


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Flower stamps the run id on every Message it builds; outside an app there is none.
    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@dataclasses.dataclass
class Device:
    node_id: int
    values: np.ndarray
    behaviour: str = "honest"
    node_config: dict = dataclasses.field(default_factory=dict)
    context: Context = dataclasses.field(init=False)
    last_masked: ArrayRecord | None = None

    def __post_init__(self) -> None:
        self.context = Context(run_id=1, node_id=self.node_id, node_config=self.node_config, state=RecordDict(),
                               run_config={})

    def answer(self, message: Message):
        try:
            return self.handle(message)
        except Exception as error:  # as a ClientApp's exception comes back: an error reply naming it
            return reply(self.node_id, error=f"Traceback...\n{type(error).__name__}: {error}")

    def handle(self, message: Message):
        if message.metadata.message_type == UNMASK_MESSAGE_TYPE:
            if self.behaviour == "drops-while-unmasking":
                return reply(self.node_id, error="ConnectionError: gone")
            return reply(self.node_id, RecordDict({SECURE_ARRAYS_RECORD: unmask_record(message, self.context)}))
        if self.behaviour == "drops":
            return reply(self.node_id, error="Traceback...\nRuntimeError: device went offline")
        if self.behaviour == "new-key":
            self.context.state = RecordDict()  # a restart: the old key pair is gone
            self.behaviour = "honest"
        metrics = MetricRecord({"partition-id": self.node_id, "declined": 0})
        content = RecordDict({METRICS_RECORD: metrics, CONFIG_RECORD: ConfigRecord()})
        add_masked(content, message, self.context, {"update/w": self.values, "weight": np.array([1.0])})
        if self.behaviour == "replays" and self.last_masked is not None:
            content[SECURE_ARRAYS_RECORD] = self.last_masked
        if self.behaviour == "sends-wrong-length":
            masked = content[SECURE_ARRAYS_RECORD]
            content[SECURE_ARRAYS_RECORD] = ArrayRecord({**dict(masked.items()),
                                                         "masked": Array(masked["masked"].numpy()[:-1].copy())})
        self.last_masked = content.array_records.get(SECURE_ARRAYS_RECORD)
        return reply(self.node_id, content)


def reply(node: int, content: RecordDict | None = None, error: str | None = None):
    return SimpleNamespace(content=content if content is not None else RecordDict(),
                           metadata=SimpleNamespace(src_node_id=node, reply_to_message_id=""),
                           has_error=lambda: error is not None, error=SimpleNamespace(reason=error))


class FakeGrid:
    """Delivers each message to its device; records everything the server receives."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = {device.node_id: device for device in devices}
        self.received: list = []
        self.sent: list = []

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.sent += messages
        replies = [self.devices[m.metadata.dst_node_id].answer(m) for m in messages]
        self.received += replies
        return replies


def federation(count: int = 10, seed: int = 0, enrolled_in: Path | None = None, **behaviours: str):
    """``count`` devices; with ``enrolled_in``, each holds an identity certified by an authority it pins there."""
    rng = np.random.default_rng(seed)
    authority = DeviceAuthority.generate() if enrolled_in is not None else None
    devices = [Device(2**62 + 7 * i, rng.uniform(-0.9, 0.9, 50), node_config=enrolment(enrolled_in, authority, i))
               for i in range(count)]
    for index, behaviour in behaviours.items():
        devices[int(index.removeprefix("d"))].behaviour = behaviour
    config = FederatedConfig.from_dict({"secure_aggregation": {"enabled": True, "degree": count - 1}})
    aggregator = SecureAggregator(config, "test-run", None if authority is None else authority.public_key)
    for device in devices:
        registration = key_registration(device.context)
        aggregator.register(device.node_id, registration[PUBLIC_KEY_KEY], registration)
    return devices, aggregator, FakeGrid(devices)


def enrolment(folder: Path | None, authority: DeviceAuthority | None, index: int) -> dict:
    """A device's node config naming its certified identity and the authority it pins (as a SuperNode's would)."""
    if folder is None or authority is None:
        return {}
    write_authority_key(folder / "device-authority.pub", authority.public_key)
    authority.issue().write(folder / f"device-{index}.identity")
    return {DEVICE_AUTHORITY_NODE_KEY: str(folder / "device-authority.pub"),
            IDENTITY_PATH_NODE_KEY: str(folder / f"device-{index}.identity")}


def train_messages(devices: list[Device]) -> list[Message]:
    return [Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=d.node_id, message_type="train")
            for d in devices]


def expected(devices: list[Device], left_out: set[int] = frozenset()) -> np.ndarray:
    kept = [d.values for i, d in enumerate(devices) if i not in left_out]
    return np.concatenate([np.sum(kept, axis=0), [float(len(kept))]])


def test_the_server_gets_the_sum_and_only_masked_integers() -> None:
    devices, aggregator, grid = federation()
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    assert result.failure is None and len(result.contributors) == 10
    codec = LAYOUT.codec(10, 32)
    assert np.all(np.abs(result.total - expected(devices)) <= codec.max_error(10))
    for received in grid.received:
        for record in received.content.array_records.values():
            for name, array in record.items():
                assert not np.issubdtype(array.numpy().dtype, np.floating), f"{name} travelled as floats"
    assert result.bytes_up > 0 and result.bytes_down > 0


def test_a_device_that_drops_before_sending_is_recovered_and_named() -> None:
    devices, aggregator, grid = federation(d2="drops")
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    assert result.failure is None
    assert [f["reason"] for f in result.failures] == ["RuntimeError: device went offline"]
    # its neighbours revealed the pairwise seeds they shared with it for this round only
    assert np.all(np.abs(result.total - expected(devices, {2})) <= LAYOUT.codec(10, 32).max_error(9))


def test_a_device_that_drops_after_sending_is_still_counted() -> None:
    devices, aggregator, grid = federation(d5="drops-while-unmasking")
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    # its self mask came from its neighbours' shares
    assert result.failure is None and len(result.contributors) == 10
    assert np.all(np.abs(result.total - expected(devices)) <= LAYOUT.codec(10, 32).max_error(10))


def test_a_dropout_in_each_step_between_neighbours_fails_loudly() -> None:
    # The known limit of deriving round masks from long-term keys (docs/secure-aggregation.md):
    # only devices 2 and 5 knew their pairwise seed for the round.
    devices, aggregator, grid = federation(d2="drops", d5="drops-while-unmasking")
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    assert result.total is None and "nobody else holds it" in result.failure


def test_too_many_dropouts_fail_the_exchange_loudly() -> None:
    behaviours = {f"d{i}": "drops-while-unmasking" for i in range(6)}
    devices, aggregator, grid = federation(d9="drops", **behaviours)
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    assert result.total is None and "cannot be unmasked" in result.failure


def test_hostile_contributions_are_rejected_with_a_reason_and_the_rest_aggregated() -> None:
    devices, aggregator, grid = federation(d1="sends-wrong-length", d4="replays")
    aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 2)
    reasons = {f["node"]: f["reason"] for f in result.failures}
    assert "must be 51 values of uint32" in reasons[devices[1].node_id]
    assert "round 1, but this is round 2" in reasons[devices[4].node_id]
    assert result.failure is None
    assert np.all(np.abs(result.total - expected(devices, {1, 4})) <= LAYOUT.codec(10, 32).max_error(8))


def test_a_device_with_a_new_key_registers_again_and_joins_the_next_round() -> None:
    devices, aggregator, grid = federation(d3="new-key")
    first = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    assert "key changed" in {f["node"]: f["reason"] for f in first.failures}[devices[3].node_id]
    assert first.failure is None
    second = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 2)
    assert second.failure is None and len(second.contributors) == 10


def test_an_unmask_request_for_another_exchange_is_refused() -> None:
    devices, aggregator, grid = federation(d0="drops-while-unmasking")  # device 0 still holds its round state
    aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    stale = Message(RecordDict({"secure-aggregation-config": ConfigRecord({"exchange-id": "another"}),
                                SECURE_ARRAYS_RECORD: ArrayRecord()}),
                    dst_node_id=devices[0].node_id, message_type=UNMASK_MESSAGE_TYPE)
    with pytest.raises(ValueError, match="unmask request for exchange 'another'"):
        unmask_record(stale, devices[0].context)


# -- a lying server (issue 23): each refusal below is the device's, whatever the server asks ----------------------

def unmask_messages(grid: FakeGrid) -> list[Message]:
    return [m for m in grid.sent if m.metadata.message_type == UNMASK_MESSAGE_TYPE]


def test_a_repeated_unmask_request_is_refused() -> None:
    devices, aggregator, grid = federation()
    assert aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1).failure is None
    # The server asks device 0 again about the same contribution (say with another survivor set).
    again = unmask_messages(grid)[0]
    target = next(d for d in devices if d.node_id == again.metadata.dst_node_id)
    with pytest.raises(RuntimeError, match="sent no masked contribution"):
        unmask_record(again, target.context)


def test_a_reused_label_is_refused_so_no_keystream_masks_two_updates() -> None:
    devices, aggregator, grid = federation()
    assert aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 2).failure is None
    for server_round in (2, 1):  # the same label again, then an older one
        result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", server_round)
        assert result.failure == "no masked contribution arrived" and not result.contributors
        assert all("refusing to mask for" in failure["reason"] for failure in result.failures)
    # A fresh label is fine.
    assert aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 3).failure is None


def test_too_few_contributions_are_never_unmasked() -> None:
    devices, aggregator, grid = federation(d2="drops")
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1,
                                 gate=lambda count: ("discarded", f"{count} updates, fewer than 10")
                                 if count < 10 else None)
    assert result.gate == ("discarded", "9 updates, fewer than 10") and result.total is None
    assert result.failure == "9 updates, fewer than 10; nothing was unmasked"
    assert not unmask_messages(grid)  # no device was asked to reveal anything


# -- key substitution (issue 23, attack 1) ------------------------------------------------------------------------

def substitute_keys(aggregator: SecureAggregator, devices: list[Device], victim: Device) -> dict[int, DeviceKeys]:
    """The server registers key pairs of its own for every device but ``victim`` (keeping their endorsements)."""
    own = {d.node_id: DeviceKeys.generate() for d in devices if d is not victim}
    for node, keys in own.items():
        aggregator.public_keys[node] = keys.public_key
    return own


def recover_victim(aggregator: SecureAggregator, grid: FakeGrid, victim: Device, own: dict[int, DeviceKeys],
                   server_round: int) -> np.ndarray | None:
    """What the key-substituting server computes from the victim's masked reply alone, or None without one."""
    reply = next(r for m, r in reversed(list(zip(grid.sent, grid.received)))
                 if m.metadata.dst_node_id == victim.node_id and m.metadata.message_type == "train")
    if reply.has_error() or SECURE_ARRAYS_RECORD not in reply.content:
        return None
    contribution = decode_contribution({n: a.numpy() for n, a in reply.content[SECURE_ARRAYS_RECORD].items()})
    exchange_id, victim_key = f"test-run/{aggregator.session}/train", device_keys(victim.context).public_key
    secrets = {node: keys.agree(victim_key) for node, keys in own.items()}
    shares = [Share.from_bytes(decrypt_share(
        round_key(secret, "share-encryption", exchange_id, server_round, victim.node_id, node),
        contribution.encrypted_shares[node], share_context(exchange_id, server_round, victim.node_id, node)))
        for node, secret in secrets.items()]
    codec = LAYOUT.codec(len(own) + 1, 32)
    total = subtract_mod(contribution.masked, mask_vector(recover_secret(shares, SEED_BYTES), codec.length, 32), 32)
    for node, secret in secrets.items():
        pairwise = mask_vector(round_key(secret, "mask", exchange_id, server_round, victim.node_id, node),
                               codec.length, 32)
        # the victim added the pairwise mask when its id was the lower one, and subtracted it otherwise
        total = (subtract_mod(total, pairwise, 32) if victim.node_id < node
                 else (total + pairwise.astype(total.dtype)) % np.uint64(2**32)).astype(total.dtype)
    return codec.decode_sum(total, 1)


def test_without_enrolment_a_key_substituting_server_recovers_one_devices_update_exactly() -> None:
    # The attack the pinned authority stops, shown working on devices that pin none.
    devices, aggregator, grid = federation()
    victim = devices[4]
    own = substitute_keys(aggregator, devices, victim)
    aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    recovered = recover_victim(aggregator, grid, victim, own, 1)
    assert recovered is not None
    assert np.all(np.abs(recovered - np.concatenate([victim.values, [1.0]])) <= LAYOUT.codec(10, 32).max_error(1))


def test_enrolled_devices_refuse_substituted_keys_before_masking_anything(tmp_path: Path) -> None:
    devices, aggregator, grid = federation(enrolled_in=tmp_path)
    assert aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1).failure is None  # honest relay
    victim = devices[4]
    own = substitute_keys(aggregator, devices, victim)
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 2)
    assert recover_victim(aggregator, grid, victim, own, 2) is None  # nothing was masked with the server's keys
    assert result.total is None and not result.contributors
    reasons = {failure["node"]: failure["reason"] for failure in result.failures}
    assert "is not the one its identity endorsed" in reasons[victim.node_id]


def test_an_enrolled_device_refuses_an_honest_key_shown_under_another_node(tmp_path: Path) -> None:
    devices, aggregator, grid = federation(enrolled_in=tmp_path)
    moved, source = devices[1].node_id, devices[2].node_id
    aggregator.public_keys[moved] = aggregator.public_keys[source]
    aggregator.endorsements[moved] = aggregator.endorsements[source]
    result = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1)
    reasons = {failure["node"]: failure["reason"] for failure in result.failures}
    assert f"endorsed for node {moved}" in reasons[devices[0].node_id]


def test_a_device_the_authority_did_not_enrol_cannot_join_and_the_round_goes_on(tmp_path: Path) -> None:
    devices, aggregator, grid = federation(enrolled_in=tmp_path)
    # An eleventh device enrolled by an authority of its own (or the server's): refused at registration.
    stranger = Device(2**62 + 999, np.full(50, 0.5), node_config=enrolment(tmp_path / "other", _mkdir(
        tmp_path / "other") or DeviceAuthority.generate(), 0))
    registration = key_registration(stranger.context)
    aggregator.register(stranger.node_id, registration[PUBLIC_KEY_KEY], registration)
    # And a device with no identity at all.
    bare = Device(2**62 + 1001, np.full(50, 0.5))
    aggregator.register(bare.node_id, device_keys(bare.context).public_key, {})
    grid.devices.update({stranger.node_id: stranger, bare.node_id: bare})
    result = aggregator.exchange(grid, train_messages([*devices, stranger, bare]), LAYOUT, "train", 1)
    reasons = {failure["node"]: failure["reason"] for failure in result.failures}
    assert "key not certified: its identity key is not certified" in reasons[stranger.node_id]
    assert "key not certified: it carries no endorsement" in reasons[bare.node_id]
    assert result.failure is None and len(result.contributors) == 10
    assert np.all(np.abs(result.total - expected(devices)) <= LAYOUT.codec(12, 32).max_error(10))


def test_an_enrolled_device_with_a_new_key_registers_it_endorsed_and_joins_the_next_round(tmp_path: Path) -> None:
    devices, aggregator, grid = federation(enrolled_in=tmp_path, d3="new-key")
    assert aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 1).failure is None
    second = aggregator.exchange(grid, train_messages(devices), LAYOUT, "train", 2)
    assert second.failure is None and len(second.contributors) == 10


def _mkdir(path: Path) -> None:
    path.mkdir()
