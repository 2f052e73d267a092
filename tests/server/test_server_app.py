"""The ServerApp's inputs: a run keeps the federation manifest it started with, and needs one."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core.data.config import DataConfig
from recsys_core.data.loading import load_interactions
from recsys_core.data.splits import split_log
from recsys_core.data.synthetic import SyntheticConfig
from recsys_core.federated.manifest import MANIFEST_FILE, FederationManifest, ManifestError
from server.run_directory import RunDirectory
from server.server_app import run_manifest


def manifest(partitions: int) -> FederationManifest:
    data = DataConfig(synthetic=SyntheticConfig(n_users=20, n_items=40))
    train = split_log(load_interactions(data), data.split).train
    return FederationManifest.from_training_log("synthetic", train, partitions, max_training_rows=10, max_users=1)


def test_a_run_without_a_manifest_says_how_to_write_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="fedrec manifest --config CONFIG --output federation.json"):
        run_manifest(RunDirectory(tmp_path / "run"), None)


def test_the_given_manifest_is_kept_and_a_different_one_refused_on_resume(tmp_path: Path) -> None:
    directory = RunDirectory(tmp_path / "run")
    given = manifest(20).write(tmp_path / "federation.json")
    assert run_manifest(directory, str(given)) == manifest(20)
    assert (directory.path / MANIFEST_FILE).exists()
    assert run_manifest(directory, None) == manifest(20)  # a resumed run reads its own copy
    other = manifest(19).write(tmp_path / "other.json")
    with pytest.raises(ManifestError, match="differs from the manifest this run started with"):
        run_manifest(directory, str(other))
