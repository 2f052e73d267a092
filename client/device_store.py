"""A device whose training data is what the app recorded through the SDK (a real deployment).

When the SuperNode's node config names a store, the ClientApp trains on the user's
recorded feedback instead of a dataset partition, and keeps its training state
(private parameters, optimiser state, privacy accountant) in that encrypted store, where
the app's ``recommend`` finds the user embedding federated training fitted:

    flower-supernode ... --node-config 'partition-id=0 num-partitions=1 store-path="/data/user.store"
        store-key-file="/secure/user.key" bundle-path="/data/final-model"'

``store-key-file`` holds the store's 32-byte key as 64 hex digits (from the OS keystore);
``store-passphrase-env`` names an environment variable holding a passphrase instead.
``bundle-path`` is the global model bundle the app uses (its catalogue maps item ids);
``bundle-public-key`` (``bundle-signing.pub`` from ``fedrec deploy certs``) pins the key that
must have signed it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.sdk.device import Device
from client.sdk.store import KeySource
from recsys_core.bundle_signing import load_public_key
from recsys_core.data.splits import DatasetSplit, split_log
from recsys_core.errors import FedrecError
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.state import DeviceState

STORE_PATH_KEY = "store-path"
STORE_KEY_FILE_KEY = "store-key-file"
STORE_PASSPHRASE_ENV_KEY = "store-passphrase-env"
BUNDLE_PATH_KEY = "bundle-path"
#: ``bundle-signing.pub`` from ``fedrec deploy certs``: the node loads only bundles signed by its key.
BUNDLE_PUBLIC_KEY_KEY = "bundle-public-key"


def key_source_from_node_config(node_config: Mapping[str, object]) -> KeySource:
    """The store's key from the node config: a key file (hex) or an environment variable with a passphrase."""
    if STORE_KEY_FILE_KEY in node_config:
        path = Path(str(node_config[STORE_KEY_FILE_KEY]))
        try:
            key = bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            raise FedrecError(f"node config {STORE_KEY_FILE_KEY}: {path} does not exist") from None
        except ValueError:
            raise FedrecError(f"node config {STORE_KEY_FILE_KEY}: {path} must hold the key as 64 hex digits") from None
        if len(key) != 32:
            raise FedrecError(f"node config {STORE_KEY_FILE_KEY}: {path} holds {len(key)} bytes, the key is 32")
        return KeySource.from_app_key(key)
    if STORE_PASSPHRASE_ENV_KEY in node_config:
        variable = str(node_config[STORE_PASSPHRASE_ENV_KEY])
        passphrase = os.environ.get(variable)
        if not passphrase:
            raise FedrecError(f"node config {STORE_PASSPHRASE_ENV_KEY}: the environment variable {variable} is "
                              "not set or empty")
        return KeySource.from_passphrase(passphrase)
    raise FedrecError(f"node config {STORE_PATH_KEY} needs {STORE_KEY_FILE_KEY} or {STORE_PASSPHRASE_ENV_KEY}")


@dataclass
class StoreBackedDevice:
    """The SDK device behind a SuperNode: its feedback is the training data, its store keeps the state."""

    device: Device

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> StoreBackedDevice | None:
        """The device named by the node config, or None when it names no store (a simulated partition)."""
        if STORE_PATH_KEY not in node_config:
            return None
        if BUNDLE_PATH_KEY not in node_config:
            raise FedrecError(f"node config {STORE_PATH_KEY} needs {BUNDLE_PATH_KEY}: the global model bundle whose "
                              "catalogue names the items the app records")
        trusted = None
        if BUNDLE_PUBLIC_KEY_KEY in node_config:  # the deployment's bundle-signing key, pinned
            trusted = [load_public_key(str(node_config[BUNDLE_PUBLIC_KEY_KEY]))]
        device = Device.open(str(node_config[STORE_PATH_KEY]), key_source_from_node_config(node_config),
                             trusted_bundle_keys=trusted)
        device.load_bundle(str(node_config[BUNDLE_PATH_KEY]))
        return cls(device)

    def split(self, config: FederatedConfig) -> DatasetSplit:
        """The user's positives, held out for evaluation as the run's split config says."""
        return split_log(self.device.training_log(), config.data.split)

    def read_state(self) -> DeviceState | None:
        arrays = self.device.training_state()
        return DeviceState.from_arrays(arrays) if arrays else None

    def write_state(self, state: DeviceState) -> None:
        self.device.save_training_state({name: np.asarray(value) for name, value in state.to_arrays().items()})
