"""Signed bundles: a device that pins the deployment's key loads only what that key signed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_core.bundle import BundleError, ModelBundle, _content_sha256, read_bundle, write_bundle
from recsys_core.bundle_signing import (
    SigningKeyError,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    private_key_bytes,
    public_key_text,
)
from recsys_core.files import file_sha256

BUNDLE = ModelBundle("neumf", {"gmf_dim": 4}, 3, {"item.weight": np.arange(6, dtype=np.float32).reshape(3, 2)},
                     {"rounds": 2}, {"item_ids": np.array(["a", "b", "c"])})
OPERATOR = generate_signing_key()
PINNED = [bytes.fromhex(public_key_text(OPERATOR))]


def test_a_signed_bundle_loads_for_a_device_that_pins_the_key(tmp_path: Path) -> None:
    loaded = read_bundle(write_bundle(tmp_path / "b", BUNDLE, OPERATOR), PINNED)
    np.testing.assert_array_equal(loaded.shared_parameters["item.weight"], BUNDLE.shared_parameters["item.weight"])


def test_an_unsigned_bundle_or_one_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="refused: it is not signed"):
        read_bundle(write_bundle(tmp_path / "unsigned", BUNDLE), PINNED)
    with pytest.raises(BundleError, match="refused: it is signed by key .* which this device does not trust"):
        read_bundle(write_bundle(tmp_path / "other", BUNDLE, generate_signing_key()), PINNED)
    read_bundle(tmp_path / "unsigned")  # a reader that pins nothing (a simulation) still loads it


def test_a_forged_bundle_with_every_digest_rewritten_is_refused(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b", BUNDLE, OPERATOR)
    # The attacker replaces the parameters and fixes every digest the bundle carries, as the issue did.
    np.savez(folder / "parameters.npz", **{"item.weight": np.full((3, 2), 9.0, dtype=np.float32)})
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["parameters_sha256"] = file_sha256(folder / "parameters.npz")
    manifest["manifest_sha256"] = _content_sha256(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert read_bundle(folder).shared_parameters["item.weight"][0, 0] == 9.0  # digests alone let it through
    with pytest.raises(BundleError, match="signature does not match its content"):
        read_bundle(folder, PINNED)


def test_key_files_round_trip_and_a_wrong_file_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "signing.key").write_bytes(private_key_bytes(OPERATOR))
    (tmp_path / "signing.pub").write_text(public_key_text(OPERATOR))
    assert public_key_text(load_signing_key(tmp_path / "signing.key")) == public_key_text(OPERATOR)
    assert load_public_key(tmp_path / "signing.pub") == PINNED[0]
    (tmp_path / "short.pub").write_text("abcd\n")
    with pytest.raises(SigningKeyError, match="holds 2 bytes"):
        load_public_key(tmp_path / "short.pub")
    with pytest.raises(SigningKeyError, match="not a readable Ed25519 private key"):
        load_signing_key(tmp_path / "signing.pub")
