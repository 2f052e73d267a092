"""The federated dataset: the whole split, its client partitions, and each device's own rows.

Every process that plays devices loads the dataset once (:func:`load_federated_data`
caches it) and slices one partition per call with :meth:`FederatedData.device_split`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from recsys_core.audit.canaries import CanaryPlan, insert_canaries
from recsys_core.config import dataclass_from_dict, dataclass_to_dict
from recsys_core.data.config import DataConfig
from recsys_core.data.loading import load_interactions
from recsys_core.data.partitions import ClientPartitioner, PartitionConfig, localize_users, rows_of_users
from recsys_core.data.splits import DatasetSplit, split_log
from recsys_core.federated.manifest import FederationManifest
from recsys_core.models import CatalogInfo


@dataclass(frozen=True)
class FederatedData:
    """The split of the whole dataset and its client partitions (built once per process)."""

    split: DatasetSplit
    partitioners: tuple[ClientPartitioner, ClientPartitioner, ClientPartitioner]
    #: The audit canaries planted in ``split.train`` (``data.canaries``), or None.
    canaries: CanaryPlan | None = None

    @property
    def num_devices(self) -> int:
        return self.partitioners[0].num_partitions

    @property
    def catalog(self) -> CatalogInfo:
        return CatalogInfo.from_log(self.split.train)

    def most_training_rows(self) -> int:
        """The most training rows any partition holds: a bound on any device's example count, by which
        secure aggregation scales example weights."""
        rows = np.bincount(self.partitioners[0].assignment, weights=np.diff(self.split.train.user_offsets),
                           minlength=self.num_devices)
        return int(rows.max()) if rows.size else 0

    def most_users(self) -> int:
        """The most users any partition holds (the range of a device's metric sums)."""
        users = np.bincount(self.partitioners[0].assignment, minlength=self.num_devices)
        return int(users.max()) if users.size else 0

    def manifest(self, dataset: str) -> FederationManifest:
        """What the server may know of this federation: the launcher writes it, the server reads nothing else."""
        canaries = None if self.canaries is None else self.canaries.to_dict(self.split.train)
        return FederationManifest.from_training_log(dataset, self.split.train, self.num_devices,
                                                    self.most_training_rows(), self.most_users(), canaries)

    def device_split(self, partition_id: int) -> DatasetSplit:
        """The partition's train/valid/test rows, with its users renumbered from 0."""
        return self.cohort_split([partition_id])

    def cohort_split(self, partition_ids: Sequence[int]) -> DatasetSplit:
        """The rows of several partitions' users together, those users renumbered from 0 in id order."""
        users = np.sort(np.concatenate([self.partitioners[0].users_of(p) for p in partition_ids]))
        parts = [localize_users(rows_of_users(part, users), users)
                 for part in (self.split.train, self.split.valid, self.split.test)]
        return DatasetSplit(*parts)


def load_federated_data(data: DataConfig, partition: PartitionConfig) -> FederatedData:
    """Loads, preprocesses, splits and partitions the dataset (cached per process)."""
    return _load_federated_data(json.dumps(dataclass_to_dict(data), sort_keys=True), partition)


@lru_cache(maxsize=2)
def _load_federated_data(data_json: str, partition: PartitionConfig) -> FederatedData:
    # Simulated clients run in long-lived worker processes: load the dataset once per
    # worker, then every call slices its own partition in time proportional to its rows.
    data = dataclass_from_dict(DataConfig, json.loads(data_json))
    split, canaries = insert_canaries(split_log(load_interactions(data), data.split), data.canaries)
    partitioners = tuple(ClientPartitioner(part, partition) for part in (split.train, split.valid, split.test))
    return FederatedData(split, partitioners, canaries)  # type: ignore[arg-type]
