"""The federation manifest: everything the server may know about a federation before devices reply.

The server reads this file and the devices' replies, and nothing else: no interaction
file, no dataset. A privacy reviewer can read in one place which of the server's inputs
came from users, and how:

- ``num_partitions``: how many devices the federation has (one partition each);
- the catalogue: ``item_ids`` and public item features, the same for every device;
- ``item_popularity``: training interactions per item, a **non-private aggregate** the
  data owner publishes (cold start in bundles, the content model's popularity input);
  a deployment that must not publish it leaves it at zeros;
- ``max_training_rows`` and ``max_users``: public bounds on one device's rows and users,
  by which secure aggregation scales example weights and metric sums (a device above the
  bound is clipped to it, never trusted beyond it);
- ``canaries``: the audit's canary plan, when the data owner planted canaries;
- ``device_authority``: the public key (hex) of the authority that enrolled the devices
  (:mod:`recsys_core.secure_aggregation.identity`), or empty. The server refuses to register
  a device whose key it does not vouch for; each device checks its neighbours itself.

It is written once, by the data owner or the simulation launcher (``fedrec simulate``
writes ``RUN_DIR/federation.json``; ``fedrec manifest`` writes one for ``flwr run``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.config import dataclass_from_dict, dataclass_to_dict
from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError, FedrecError
from recsys_core.models.base import CatalogInfo, training_counts
from recsys_core.run_records import strict_json_dumps, write_json

MANIFEST_FILE = "federation.json"
MANIFEST_FORMAT = 1


class ManifestError(FedrecError):
    """A federation manifest that is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class FederationManifest:
    """What the server may know about a federation (see the module docstring for each field's origin)."""

    dataset: str
    num_partitions: int
    item_ids: tuple[str, ...]
    item_popularity: tuple[float, ...]
    max_training_rows: int
    max_users: int
    item_feature_names: tuple[str, ...] = ()
    #: One row of public features per item, or empty.
    item_features: tuple[tuple[float, ...], ...] = ()
    canaries: dict[str, Any] | None = None
    device_authority: str = ""
    format: int = MANIFEST_FORMAT

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def validate(self) -> FederationManifest:
        if self.format != MANIFEST_FORMAT:
            raise ManifestError(f"format: expected {MANIFEST_FORMAT}, got {self.format}")
        if self.num_partitions < 1 or self.max_training_rows < 1 or self.max_users < 1:
            raise ManifestError("num_partitions, max_training_rows and max_users must be at least 1")
        if len(self.item_popularity) != self.n_items:
            raise ManifestError(f"item_popularity has {len(self.item_popularity)} entries for {self.n_items} items")
        if not all(np.isfinite(self.item_popularity)) or min(self.item_popularity, default=0.0) < 0:
            raise ManifestError("item_popularity must hold finite, non-negative counts")
        if self.item_features and (len(self.item_features) != self.n_items or any(
                len(row) != len(self.item_feature_names) for row in self.item_features)):
            raise ManifestError(f"item_features must hold {self.n_items} rows of {len(self.item_feature_names)} "
                                "values (one per feature name)")
        try:
            self.authority_key()
        except ValueError as error:
            raise ManifestError(f"device_authority: {error}") from None
        return self

    def authority_key(self) -> bytes | None:
        """The device authority's raw Ed25519 public key, None when the devices are not enrolled."""
        if not self.device_authority:
            return None
        key = bytes.fromhex(self.device_authority)
        if len(key) != 32:
            raise ValueError(f"must be 64 hex digits (an Ed25519 public key), got {len(self.device_authority)}")
        return key

    def features_array(self) -> np.ndarray | None:
        return np.asarray(self.item_features, dtype=np.float32) if self.item_features else None

    def catalog(self) -> CatalogInfo:
        """The catalogue a model is sized and built from (one user: the server holds no user's parameters)."""
        return CatalogInfo(n_users=1, n_items=self.n_items, item_features=self.features_array(),
                           item_popularity=np.asarray(self.item_popularity, dtype=np.float64))

    def bundle_catalog(self) -> dict[str, np.ndarray]:
        """The catalogue a model bundle ships (:func:`recsys_core.bundle.bundle_catalog`'s layout)."""
        catalog = {"item_ids": np.array(list(self.item_ids)),
                   "item_popularity": np.asarray(self.item_popularity, dtype=np.float64)}
        features = self.features_array()
        if features is not None:
            catalog["item_features"] = features
            catalog["item_feature_names"] = np.array(list(self.item_feature_names))
        return catalog

    @classmethod
    def from_training_log(cls, dataset: str, train: InteractionLog, num_partitions: int, max_training_rows: int,
                          max_users: int, canaries: dict[str, Any] | None = None) -> FederationManifest:
        """The data owner's manifest of a training split (the simulation launcher's case)."""
        features = train.item_features
        return cls(
            dataset=dataset, num_partitions=num_partitions,
            item_ids=tuple(str(item) for item in train.item_map.original_ids.tolist()),
            item_popularity=tuple(training_counts(train).tolist()),
            max_training_rows=max(max_training_rows, 1), max_users=max(max_users, 1),
            item_feature_names=() if features is None else tuple(features.names),
            item_features=() if features is None else tuple(
                tuple(row) for row in np.asarray(features.values, dtype=np.float32).tolist()),
            canaries=canaries).validate()

    @classmethod
    def from_bundle_catalog(cls, dataset: str, catalog: dict[str, np.ndarray], num_partitions: int,
                            max_training_rows: int, max_users: int = 1) -> FederationManifest:
        """A deployment's manifest from the catalogue its app ships: no interaction is read at all."""
        names = catalog.get("item_feature_names")
        features = catalog.get("item_features")
        return cls(
            dataset=dataset, num_partitions=num_partitions,
            item_ids=tuple(str(item) for item in catalog["item_ids"].tolist()),
            item_popularity=tuple(float(value) for value in catalog.get(
                "item_popularity", np.zeros(len(catalog["item_ids"]))).tolist()),
            max_training_rows=max_training_rows, max_users=max_users,
            item_feature_names=() if names is None else tuple(str(name) for name in names.tolist()),
            item_features=() if features is None else tuple(
                tuple(row) for row in np.asarray(features, dtype=np.float32).tolist())).validate()

    def write(self, path: str | Path) -> Path:
        write_json(path, dataclass_to_dict(self))
        return Path(path)

    def written_at(self, path: str | Path) -> bool:
        """Whether the file at ``path`` holds exactly this manifest (as :meth:`write` writes it)."""
        path = Path(path)
        try:
            kept = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return bool(kept == json.loads(strict_json_dumps(dataclass_to_dict(self), path)))


def read_manifest(path: str | Path) -> FederationManifest:
    """Reads a manifest; a missing, malformed or inconsistent file is one error naming the file and what is wrong."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no federation manifest here; the data owner writes it with `fedrec manifest` "
                            "(fedrec simulate writes it into the run directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not a readable federation manifest ({error})") from None
    if not isinstance(values, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    try:
        return dataclass_from_dict(FederationManifest, values).validate()
    except (ConfigError, ManifestError) as error:
        raise ManifestError(f"{path}: {error}") from None
