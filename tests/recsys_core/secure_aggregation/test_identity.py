"""Certified device identities and endorsed agreement keys: what a device accepts from a server that relays keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from recsys_core.secure_aggregation.identity import (
    AUTHORITY_FILE,
    DeviceAuthority,
    DeviceIdentity,
    IdentityError,
    KeyAuthenticationError,
    KeyEndorsement,
    authenticate_neighbours,
    endorsement_problem,
    enrol_simulated_devices,
    read_authority_key,
    simulated_identity_path,
)
from recsys_core.secure_aggregation.keys import DeviceKeys

NODE = 2**62 + 11


@pytest.fixture(scope="module")
def authority() -> DeviceAuthority:
    return DeviceAuthority.generate()


def test_an_endorsed_key_of_a_certified_device_is_accepted(authority: DeviceAuthority) -> None:
    identity, key = authority.issue(), DeviceKeys.generate().public_key
    assert endorsement_problem(authority.public_key, NODE, key, identity.endorse(NODE, key)) is None


def test_a_substituted_moved_or_uncertified_key_is_refused_with_the_reason(authority: DeviceAuthority) -> None:
    identity, key = authority.issue(), DeviceKeys.generate().public_key
    endorsement = identity.endorse(NODE, key)
    server_key = DeviceKeys.generate().public_key
    # The server swaps in its own agreement key but keeps the device's endorsement.
    assert "not the one its identity endorsed" in endorsement_problem(authority.public_key, NODE, server_key,
                                                                      endorsement)
    # It shows an honest device's endorsed key under another node id.
    assert "for node 7" in endorsement_problem(authority.public_key, 7, key, endorsement)
    # It endorses its key with an identity of its own, certified by an authority of its own.
    own = DeviceAuthority.generate().issue()
    assert "not certified by the pinned device authority" in endorsement_problem(
        authority.public_key, NODE, server_key, own.endorse(NODE, server_key))
    # It forges a certificate bit.
    forged = dataclasses.replace(endorsement, certificate=bytes([endorsement.certificate[0] ^ 1])
                                 + endorsement.certificate[1:])
    assert "not certified" in endorsement_problem(authority.public_key, NODE, key, forged)
    assert "no endorsement" in endorsement_problem(authority.public_key, NODE, key, None)


def test_a_neighbour_set_with_a_repeated_or_own_identity_is_refused(authority: DeviceAuthority) -> None:
    me, other = authority.issue(), authority.issue()
    keys = {1: DeviceKeys.generate().public_key, 2: DeviceKeys.generate().public_key}
    honest = {node: authority.issue().endorse(node, key) for node, key in keys.items()}
    authenticate_neighbours(authority.public_key, me.public_key, keys, honest)
    twice = {node: other.endorse(node, key) for node, key in keys.items()}
    with pytest.raises(KeyAuthenticationError, match="1 and 2 are the same certified device"):
        authenticate_neighbours(authority.public_key, me.public_key, keys, twice)
    mirrored = {**honest, 2: me.endorse(2, keys[2])}
    with pytest.raises(KeyAuthenticationError, match="neighbour 2 carries this device's own identity"):
        authenticate_neighbours(authority.public_key, me.public_key, keys, mirrored)
    with pytest.raises(KeyAuthenticationError, match="neighbour 2: it carries no endorsement"):
        authenticate_neighbours(authority.public_key, me.public_key, keys, {1: honest[1]})


def test_a_malformed_endorsement_is_one_clear_error() -> None:
    with pytest.raises(KeyAuthenticationError, match="'certificate' must be 64 bytes"):
        KeyEndorsement.from_wire({"identity-key": b"k" * 32, "identity-certificate": b"short",
                                  "key-signature": b"s" * 64})
    with pytest.raises(KeyAuthenticationError, match="lacks or garbles"):
        KeyEndorsement.from_wire({"identity-key": b"k" * 32})
    assert KeyEndorsement.from_wire({}) is None


def test_an_identity_file_round_trips_and_is_checked_against_the_pinned_authority(
        authority: DeviceAuthority, tmp_path: Path) -> None:
    identity = authority.issue()
    identity.write(tmp_path / "device.identity")
    assert (tmp_path / "device.identity").stat().st_mode & 0o777 == 0o600
    assert DeviceIdentity.read(tmp_path / "device.identity", authority.public_key) == identity
    with pytest.raises(IdentityError, match="not certified by the pinned device authority"):
        DeviceIdentity.read(tmp_path / "device.identity", DeviceAuthority.generate().public_key)
    (tmp_path / "broken.identity").write_text("{not json")
    with pytest.raises(IdentityError, match="broken.identity: not a readable fedrec device identity"):
        DeviceIdentity.read(tmp_path / "broken.identity", authority.public_key)


def test_simulated_devices_are_enrolled_once_and_the_authority_key_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "identities"
    public = enrol_simulated_devices(folder, 3)
    assert read_authority_key(folder / AUTHORITY_FILE) == public
    identities = [DeviceIdentity.read(simulated_identity_path(folder, p), public) for p in range(3)]
    assert len({identity.public_key for identity in identities}) == 3
    # A resumed run keeps its enrolment: the same authority, the same identities.
    assert enrol_simulated_devices(folder, 3) == public
    assert DeviceIdentity.read(simulated_identity_path(folder, 0), public) == identities[0]
    (folder / AUTHORITY_FILE).write_text("zz\n")
    with pytest.raises(Exception, match="not a device-authority public key"):
        read_authority_key(folder / AUTHORITY_FILE)
