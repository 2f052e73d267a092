"""The global model bundle the server publishes and devices load.

A bundle is a folder with ``parameters.npz`` (the shared parameters), optionally
``catalog.npz`` (what a device needs to name and rank items: ``item_ids``, the
original ids as strings in internal order; ``item_popularity``; ``item_features``) and
``manifest.json`` (schema version, model name and options, catalogue size, and the
sha256 of each ``.npz``). A mismatched schema, a truncated or edited file is refused
with :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import FedrecError
from recsys_core.models.base import training_counts
from recsys_core.run_records import write_json

BUNDLE_SCHEMA_VERSION = 1


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def write_bundle(folder: str | Path, bundle: ModelBundle) -> Path:
    """Writes ``bundle`` into ``folder`` (parameters first, then the manifest that vouches for them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parameters = folder / "parameters.npz"
    np.savez(parameters, **bundle.shared_parameters)  # type: ignore[arg-type]
    catalog: dict[str, Any] = {}
    if bundle.catalog:
        np.savez(folder / "catalog.npz", **bundle.catalog)  # type: ignore[arg-type]
        catalog = {"catalog_sha256": _sha256(folder / "catalog.npz")}
    write_json(folder / "manifest.json", {
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "model": bundle.model,
        "options": bundle.options,
        "n_items": bundle.n_items,
        "parameters_sha256": _sha256(parameters),
        **catalog,
        "metadata": bundle.metadata,
    })
    return folder


def read_bundle(folder: str | Path) -> ModelBundle:
    """Reads and verifies a bundle; raises :class:`BundleError` naming what is wrong."""
    folder = Path(folder)
    manifest_path, parameters = folder / "manifest.json", folder / "parameters.npz"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: missing; is {folder} a model bundle?") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error})") from None
    if manifest.get("schema_version") != BUNDLE_SCHEMA_VERSION:
        raise BundleError(f"{manifest_path}: schema version {manifest.get('schema_version')!r}, "
                          f"this fedrec reads version {BUNDLE_SCHEMA_VERSION}")
    if not parameters.exists() or _sha256(parameters) != manifest.get("parameters_sha256"):
        raise BundleError(f"{parameters}: missing or its sha256 does not match the manifest "
                          "(truncated or tampered); keep using the previous bundle")
    arrays = _load_arrays(parameters)
    catalog = {}
    if "catalog_sha256" in manifest:
        catalog_path = folder / "catalog.npz"
        if not catalog_path.exists() or _sha256(catalog_path) != manifest["catalog_sha256"]:
            raise BundleError(f"{catalog_path}: missing or its sha256 does not match the manifest "
                              "(truncated or tampered); keep using the previous bundle")
        catalog = _load_arrays(catalog_path)
    return ModelBundle(manifest["model"], manifest["options"], int(manifest["n_items"]), arrays,
                       manifest.get("metadata", {}), catalog)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: unreadable ({error})") from None
