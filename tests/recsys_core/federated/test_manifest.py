"""The federation manifest: what the server may know, round-tripped exactly and rejected when malformed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_core.bundle import bundle_catalog
from recsys_core.data.config import DataConfig
from recsys_core.data.loading import load_interactions
from recsys_core.data.splits import split_log
from recsys_core.data.synthetic import SyntheticConfig
from recsys_core.federated.manifest import FederationManifest, ManifestError, read_manifest
from recsys_core.models.base import CatalogInfo


@pytest.fixture(scope="module")
def train():
    data = DataConfig(synthetic=SyntheticConfig(n_users=40, n_items=30))
    return split_log(load_interactions(data), data.split).train


def test_the_manifest_gives_the_catalogue_and_bundle_catalogue_of_the_data_exactly(train, tmp_path: Path) -> None:
    manifest = FederationManifest.from_training_log("synthetic", train, num_partitions=40, max_training_rows=9,
                                                    max_users=1)
    loaded = read_manifest(manifest.write(tmp_path / "federation.json"))
    assert loaded == manifest
    expected = CatalogInfo.from_log(train)
    catalog = loaded.catalog()
    assert catalog.n_items == expected.n_items and catalog.n_users == 1
    np.testing.assert_array_equal(catalog.item_popularity, expected.item_popularity)
    for name, values in bundle_catalog(train).items():
        np.testing.assert_array_equal(loaded.bundle_catalog()[name], values)
        assert loaded.bundle_catalog()[name].dtype == values.dtype


def test_a_deployment_manifest_comes_from_the_apps_catalogue_alone(train) -> None:
    manifest = FederationManifest.from_bundle_catalog("app", bundle_catalog(train), num_partitions=3,
                                                      max_training_rows=50)
    assert manifest.n_items == train.n_items and manifest.max_users == 1


@pytest.mark.parametrize(("change", "words"), [
    ({"num_partitions": 0}, "num_partitions, max_training_rows and max_users must be at least 1"),
    ({"item_popularity": [1.0]}, "item_popularity has 1 entries"),
    ({"max_users": "many"}, "max_users"),
    ({"secret": 1}, "unknown config key(s) secret"),
    ({"format": 9}, "format: expected 1"),
])
def test_a_malformed_manifest_is_one_error_naming_the_file(train, tmp_path: Path, change: dict, words: str) -> None:
    values = json.loads(FederationManifest.from_training_log("synthetic", train, 40, 9, 1).write(
        tmp_path / "federation.json").read_text())
    (tmp_path / "federation.json").write_text(json.dumps({**values, **change}))
    with pytest.raises(ManifestError, match="federation.json") as error:
        read_manifest(tmp_path / "federation.json")
    assert words in str(error.value)


def test_a_missing_or_corrupt_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="fedrec manifest"):
        read_manifest(tmp_path / "nowhere.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ManifestError, match="not a readable federation manifest"):
        read_manifest(tmp_path / "bad.json")
