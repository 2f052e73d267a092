"""The global model bundle the server publishes and devices load.

A bundle is a folder with ``parameters.npz`` (the shared parameters) and
``manifest.json`` (schema version, model name and options, catalogue size, and the
sha256 of ``parameters.npz``). A mismatched schema, a truncated or edited
parameters file is refused with :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.errors import FedrecError
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(folder: str | Path, bundle: ModelBundle) -> Path:
    """Writes ``bundle`` into ``folder`` (parameters first, then the manifest that vouches for them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parameters = folder / "parameters.npz"
    np.savez(parameters, **bundle.shared_parameters)  # type: ignore[arg-type]
    write_json(folder / "manifest.json", {
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "model": bundle.model,
        "options": bundle.options,
        "n_items": bundle.n_items,
        "parameters_sha256": _sha256(parameters),
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
    with np.load(parameters) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return ModelBundle(manifest["model"], manifest["options"], int(manifest["n_items"]), arrays,
                       manifest.get("metadata", {}))
