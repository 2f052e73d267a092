"""Shared fixtures: where the real datasets live, and small logs built in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recsys_core.data.interactions import InteractionLog

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def shared_datasets_dir() -> Path:
    """``$FEDREC_TEST_DATA``, else ``../shared/datasets`` beside the repository."""
    return Path(os.environ.get("FEDREC_TEST_DATA", REPOSITORY_ROOT.parent / "shared" / "datasets"))


@pytest.fixture
def datasets_dir() -> Path:
    path = shared_datasets_dir()
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path}; set FEDREC_TEST_DATA")
    return path


@pytest.fixture
def tiny_log() -> InteractionLog:
    """Three users with 5, 3 and 2 interactions over 6 items, timestamps out of file order."""
    users = np.array([10, 10, 10, 10, 10, 20, 20, 20, 30, 30])
    items = np.array([1, 2, 3, 4, 5, 2, 6, 1, 3, 4])
    times = np.array([5, 1, 3, 2, 4, 30, 10, 20, 7, 8])
    return InteractionLog.from_original_ids(users, items, times, name="tiny")


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models gain nothing from intra-op threads, and oversubscribed cores slow them badly.
    import torch

    torch.set_num_threads(1)
