"""Credentials for a real deployment: a CA, the SuperLink's TLS certificate and SuperNode keys.

``fedrec deploy certs`` writes, with the ``cryptography`` package alone:

* ``ca.crt`` / ``ca.key``: a self-signed certificate authority (EC P-384, 10 years);
* ``superlink.crt`` / ``superlink.key``: the SuperLink's server certificate, signed by the
  CA, with a subjectAltName for every host given (IP addresses and DNS names);
* ``supernode-N`` / ``supernode-N.pub``: each SuperNode's authentication key pair, EC
  P-384 in OpenSSH format (the format Flower's node authentication reads; PKCS#8 PEM is
  refused by ``flower-supernode``);
* ``bundle-signing.key`` / ``bundle-signing.pub``: the Ed25519 key pair that signs the
  model bundles devices load (:mod:`recsys_core.bundle_signing`); apps pin the public half.
* ``device-authority.key`` / ``device-authority.pub``: the Ed25519 authority that enrols
  devices for secure aggregation (:mod:`recsys_core.secure_aggregation.identity`); every
  SuperNode pins the public half, and the federation manifest names it. Keep the private
  half away from the server: whoever holds it can enrol devices.
* ``supernode-N.identity``: each SuperNode's device identity, certified by that authority.

Private keys are written with mode 0600. Existing files are never overwritten: a
deployment's CA or node keys are not recreated by accident.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from recsys_core.bundle_signing import generate_signing_key, private_key_bytes, public_key_text
from recsys_core.errors import FedrecError
from recsys_core.secure_aggregation.identity import DeviceAuthority, write_authority_key

CA_DAYS = 3650
BUNDLE_SIGNING_KEY = "bundle-signing.key"
BUNDLE_PUBLIC_KEY = "bundle-signing.pub"
DEVICE_AUTHORITY_KEY = "device-authority.key"
DEVICE_AUTHORITY_PUBLIC_KEY = "device-authority.pub"
SERVER_DAYS = 825


@dataclass(frozen=True)
class DeploymentCredentials:
    """Where each credential was written."""

    ca_certificate: Path
    superlink_certificate: Path
    superlink_key: Path
    supernode_private_keys: tuple[Path, ...]
    supernode_public_keys: tuple[Path, ...]
    bundle_signing_key: Path
    bundle_public_key: Path
    device_authority_key: Path
    device_authority_public_key: Path
    supernode_identities: tuple[Path, ...]


def make_credentials(output_dir: str | Path, hosts: Sequence[str], supernodes: int) -> DeploymentCredentials:
    """Writes the CA, the SuperLink certificate for ``hosts`` and ``supernodes`` key pairs into ``output_dir``."""
    if not hosts:
        raise FedrecError("deploy certs: give at least one host the SuperLink is reached at, e.g. --host 127.0.0.1")
    if supernodes < 0:
        raise FedrecError(f"deploy certs: --supernodes must not be negative, got {supernodes}")
    folder = Path(output_dir)
    names = ["ca.crt", "ca.key", "superlink.crt", "superlink.key", BUNDLE_SIGNING_KEY, BUNDLE_PUBLIC_KEY,
             DEVICE_AUTHORITY_KEY, DEVICE_AUTHORITY_PUBLIC_KEY]
    names += [name for i in range(supernodes)
              for name in (f"supernode-{i}", f"supernode-{i}.pub", f"supernode-{i}.identity")]
    existing = [name for name in names if (folder / name).exists()]
    if existing:
        raise FedrecError(f"deploy certs: {folder} already holds {', '.join(existing)}; refusing to overwrite "
                          "credentials. Choose another --output-dir or move them away first.")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec deployment CA")])
    ca_certificate = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName([_subject_alternative_name(host) for host in hosts]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(folder / "ca.crt", ca_certificate.public_bytes(serialization.Encoding.PEM))
    _write(folder / "ca.key", _pem_private(ca_key), private=True)
    _write(folder / "superlink.crt", server_certificate.public_bytes(serialization.Encoding.PEM))
    _write(folder / "superlink.key", _pem_private(server_key), private=True)
    signing_key = generate_signing_key()
    _write(folder / BUNDLE_SIGNING_KEY, private_key_bytes(signing_key), private=True)
    _write(folder / BUNDLE_PUBLIC_KEY, public_key_text(signing_key).encode("ascii"))
    authority = DeviceAuthority.generate()
    _write(folder / DEVICE_AUTHORITY_KEY, authority.private_key.hex().encode("ascii") + b"\n", private=True)
    write_authority_key(folder / DEVICE_AUTHORITY_PUBLIC_KEY, authority.public_key)
    private_keys, public_keys, identities = [], [], []
    for index in range(supernodes):
        authority.issue().write(folder / f"supernode-{index}.identity")
        identities.append(folder / f"supernode-{index}.identity")
        node_key = ec.generate_private_key(ec.SECP384R1())
        private_path, public_path = folder / f"supernode-{index}", folder / f"supernode-{index}.pub"
        _write(private_path, node_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()), private=True)
        _write(public_path, node_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                               serialization.PublicFormat.OpenSSH) + b"\n")
        private_keys.append(private_path)
        public_keys.append(public_path)
    return DeploymentCredentials(folder / "ca.crt", folder / "superlink.crt", folder / "superlink.key",
                                 tuple(private_keys), tuple(public_keys), folder / BUNDLE_SIGNING_KEY,
                                 folder / BUNDLE_PUBLIC_KEY, folder / DEVICE_AUTHORITY_KEY,
                                 folder / DEVICE_AUTHORITY_PUBLIC_KEY, tuple(identities))


def _subject_alternative_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    # O_EXCL: never replace a credential that appeared since the check above.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
