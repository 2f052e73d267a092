"""Datasets: loading, downloading and the in-memory interaction log."""

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
