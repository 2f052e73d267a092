"""Turns a ``[data]`` section into the preprocessed interaction log a run trains on."""

from __future__ import annotations

from pathlib import Path

from recsys_core.config import dataclass_from_dict
from recsys_core.data.config import GENERIC_FILE_DATASET, SYNTHETIC_DATASET, DataConfig
from recsys_core.data.generic import ColumnMapping, load_interactions_file
from recsys_core.data.interactions import InteractionLog
from recsys_core.data.preprocessing import preprocess
from recsys_core.data.registry import load_dataset
from recsys_core.data.synthetic import generate_synthetic


def load_interactions(config: DataConfig) -> InteractionLog:
    """Loads (or generates) and preprocesses the configured interactions."""
    if config.dataset == SYNTHETIC_DATASET:
        log = generate_synthetic(config.synthetic)
    elif config.dataset == GENERIC_FILE_DATASET:
        log = load_interactions_file(
            Path(str(config.path)),
            dataclass_from_dict(ColumnMapping, config.columns, prefix="data.columns."),
            file_format=config.file_format,
            encoding=config.encoding,
        )
    else:
        log = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
    return preprocess(log, config.preprocessing)
