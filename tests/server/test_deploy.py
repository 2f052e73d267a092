"""``fedrec deploy certs``: a CA, a SuperLink certificate for the given hosts, SuperNode keys in OpenSSH format."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from recsys_core.bundle_signing import load_public_key, load_signing_key, public_key_text
from recsys_core.errors import FedrecError
from recsys_core.secure_aggregation.identity import DeviceAuthority, DeviceIdentity, read_authority_key
from server.cli import main
from server.deploy import make_credentials


def test_credentials_chain_to_the_ca_and_name_every_host(tmp_path: Path) -> None:
    credentials = make_credentials(tmp_path, ["127.0.0.1", "superlink.example.org"], supernodes=2)
    ca = x509.load_pem_x509_certificate(credentials.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(credentials.superlink_certificate.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for private_path, public_path in zip(credentials.supernode_private_keys, credentials.supernode_public_keys):
        private = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
        public = serialization.load_ssh_public_key(public_path.read_bytes())
        assert private.public_key().public_numbers() == public.public_numbers()
    for private_path in (credentials.superlink_key, tmp_path / "ca.key", *credentials.supernode_private_keys,
                         credentials.bundle_signing_key, credentials.device_authority_key,
                         *credentials.supernode_identities):
        assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    # The bundle-signing pair: the public half is what apps pin.
    signing = load_signing_key(credentials.bundle_signing_key)
    assert public_key_text(signing).strip() == credentials.bundle_public_key.read_text().strip()
    assert load_public_key(credentials.bundle_public_key) == bytes.fromhex(public_key_text(signing))
    # The device authority: each SuperNode's identity is certified by it, and the identities differ.
    authority = read_authority_key(credentials.device_authority_public_key)
    assert DeviceAuthority(bytes.fromhex(credentials.device_authority_key.read_text())).public_key == authority
    identities = [DeviceIdentity.read(path, authority) for path in credentials.supernode_identities]
    assert len({identity.public_key for identity in identities}) == 2


def test_existing_credentials_are_never_overwritten(tmp_path: Path, capsys) -> None:
    assert main(["deploy", "certs", "--output-dir", str(tmp_path), "--supernodes", "1"]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    assert main(["deploy", "certs", "--output-dir", str(tmp_path), "--supernodes", "1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "ca.key").read_bytes() == before


def test_no_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FedrecError, match="at least one host"):
        make_credentials(tmp_path, [], supernodes=1)
