"""Datasets: loading, downloading and the in-memory interaction log."""

# DataConfig (recsys_core.data.config) and load_interactions (recsys_core.data.loading) are not
# re-exported: DataConfig holds audit.canaries.CanaryConfig, and audit.canaries imports this package,
# so importing them here would make ``import recsys_core.audit.canaries`` circular.
from recsys_core.data.generic import ColumnMapping, load_interactions_file
from recsys_core.data.interactions import IdMap, InteractionLog, ItemFeatures
from recsys_core.data.registry import (
    DatasetSpec,
    dataset_info,
    download_dataset,
    get_dataset_spec,
    list_datasets,
    load_dataset,
)

__all__ = [
    "ColumnMapping",
    "DatasetSpec",
    "IdMap",
    "InteractionLog",
    "ItemFeatures",
    "dataset_info",
    "download_dataset",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "load_interactions_file",
]
