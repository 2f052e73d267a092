"""The global model bundle the server publishes and devices load.

A bundle is a folder with ``parameters.npz`` (the shared parameters), optionally
``catalog.npz`` (what a device needs to name and rank items: ``item_ids``, the
original ids as strings in internal order; ``item_popularity``; ``item_features``) and
``manifest.json`` (schema version, model name and options, catalogue size, the sha256
of each ``.npz`` and of the manifest's own content). A mismatched schema, a truncated or
edited file is refused with :class:`BundleError`. The digests catch accidents (a torn
copy, a flipped byte), not an attacker, who can rewrite them too.

A bundle is written into a new folder beside the old one, which then takes its place
(:func:`~recsys_core.files.replace_folder`): a crash leaves the old bundle or the new one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recsys_core.audit.hash_chain import canonical_json
from recsys_core.bundle_signing import SIGNATURE_KEY, sign, signature_problem, signed_body
from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import FedrecError
from recsys_core.files import (
    DAMAGED_FILE_ERRORS,
    file_sha256,
    previous_folder,
    replace_folder,
    staging_folder,
    write_atomically,
)
from recsys_core.models.base import training_counts
from recsys_core.run_records import strict_json_dumps

#: 2: the manifest carries ``manifest_sha256``, the digest of its own content.
BUNDLE_SCHEMA_VERSION = 2
MANIFEST_DIGEST_KEY = "manifest_sha256"


class BundleError(FedrecError):
    """A model bundle that cannot be trusted or read."""


@dataclass(frozen=True)
class ModelBundle:
    model: str
    options: dict[str, Any]
    n_items: int
    shared_parameters: dict[str, np.ndarray]
    metadata: dict[str, Any]
    #: ``item_ids`` (str), ``item_popularity`` (float), ``item_features`` (float32 [n_items, f]) and
    #: ``item_feature_names`` (str); all optional.
    catalog: dict[str, np.ndarray] = field(default_factory=dict)


def _content_sha256(manifest: dict[str, Any]) -> str:
    """The digest of a manifest's content: every key but the digest's own, as canonical JSON."""
    body = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST_KEY}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def bundle_catalog(train: InteractionLog) -> dict[str, np.ndarray]:
    """The catalogue a device needs: original item ids, popularity (training interactions) and features.

    Popularity serves users with no history (cold start). It is computed from the
    training rows the server process loaded, as a simulation has them; a deployment whose
    server holds no interactions would sum per-device counts with secure aggregation.
    """
    catalog = {"item_ids": np.array([str(item) for item in train.item_map.original_ids.tolist()]),
               "item_popularity": training_counts(train)}
    if train.item_features is not None:
        catalog["item_features"] = np.asarray(train.item_features.values, dtype=np.float32)
        catalog["item_feature_names"] = np.array(list(train.item_features.names))
    return catalog


def write_bundle(folder: str | Path, bundle: ModelBundle, signing_key: Ed25519PrivateKey | None = None) -> Path:
    """Writes ``bundle`` as ``folder``: into a new folder first (parameters, catalogue, then the manifest
    that vouches for them), which then replaces the old one. With ``signing_key`` the manifest, and so
    every file's digest, is signed (:mod:`recsys_core.bundle_signing`)."""
    folder = Path(folder)
    staging = staging_folder(folder)
    try:
        _save_arrays(staging / "parameters.npz", bundle.shared_parameters)
        manifest: dict[str, Any] = {
            "schema_version": BUNDLE_SCHEMA_VERSION,
            "model": bundle.model,
            "options": bundle.options,
            "n_items": bundle.n_items,
            "parameters_sha256": file_sha256(staging / "parameters.npz"),
            "metadata": bundle.metadata,
        }
        if bundle.catalog:
            _save_arrays(staging / "catalog.npz", bundle.catalog)
            manifest["catalog_sha256"] = file_sha256(staging / "catalog.npz")
        manifest = json.loads(strict_json_dumps(manifest, staging / "manifest.json"))
        if signing_key is not None:
            manifest[SIGNATURE_KEY] = sign(signed_body(manifest, (MANIFEST_DIGEST_KEY,)), signing_key)
        manifest[MANIFEST_DIGEST_KEY] = _content_sha256(manifest)
        text = strict_json_dumps(manifest, staging / "manifest.json", indent=2, sort_keys=True) + "\n"
        write_atomically(staging / "manifest.json", lambda stream: stream.write(text.encode("utf-8")))
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    write_atomically(path, lambda stream: np.savez(stream, **arrays))  # type: ignore[arg-type]


def read_bundle(folder: str | Path, trusted_keys: Sequence[bytes] | None = None) -> ModelBundle:
    """Reads and verifies a bundle; raises :class:`BundleError` naming what is wrong.

    ``trusted_keys``: the raw Ed25519 public keys the reader pins; then the bundle must be signed
    by one of them. None reads unsigned bundles (simulations, tests).
    """
    folder = Path(folder)
    manifest_path, parameters = folder / "manifest.json", folder / "parameters.npz"
    if not folder.exists() and previous_folder(folder).exists():
        raise BundleError(f"{folder}: missing, but an interrupted update left the previous bundle at "
                          f"{previous_folder(folder)}; rename it back to {folder.name}")
    manifest = _read_manifest(manifest_path)
    if manifest.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{manifest_path}: schema version {manifest.get('schema_version')!r}, "
                          f"this fedrec reads version {BUNDLE_SCHEMA_VERSION}")
    if manifest.get(MANIFEST_DIGEST_KEY) != _content_sha256(manifest):
        raise BundleError(f"{manifest_path}: its content does not match its {MANIFEST_DIGEST_KEY} (damaged or "
                          "edited); keep using the previous bundle")
    if trusted_keys is not None and (problem := signature_problem(
            signed_body(manifest, (MANIFEST_DIGEST_KEY,)), manifest.get(SIGNATURE_KEY), list(trusted_keys))):
        raise BundleError(f"{folder}: refused: {problem}; load only bundles the deployment's bundle-signing key "
                          "signed (fedrec deploy certs makes it)")
    if not parameters.exists() or file_sha256(parameters) != manifest.get("parameters_sha256"):
        raise BundleError(f"{parameters}: missing or its sha256 does not match the manifest "
                          "(truncated or tampered); keep using the previous bundle")
    arrays = _load_arrays(parameters)
    catalog = {}
    if "catalog_sha256" in manifest:
        catalog_path = folder / "catalog.npz"
        if not catalog_path.exists() or file_sha256(catalog_path) != manifest["catalog_sha256"]:
            raise BundleError(f"{catalog_path}: missing or its sha256 does not match the manifest "
                              "(truncated or tampered); keep using the previous bundle")
        catalog = _load_arrays(catalog_path)
    try:
        return ModelBundle(str(manifest["model"]), dict(manifest["options"]), int(manifest["n_items"]), arrays,
                           dict(manifest.get("metadata", {})), catalog)
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"{manifest_path}: a required field is missing or malformed ({error!r})") from None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; is {path.parent} a model bundle?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: damaged, not valid UTF-8 JSON ({error}); keep using the previous bundle") \
            from None
    except OSError as error:
        raise BundleError(f"{path}: unreadable ({error})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: damaged, holds a JSON {type(manifest).__name__}, not a bundle manifest")
    return manifest


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except DAMAGED_FILE_ERRORS as error:
        raise BundleError(f"{path}: unreadable ({error})") from None
