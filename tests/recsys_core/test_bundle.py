"""The global model bundle: round trip, catalogue, and refusal of anything altered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_core.bundle import BundleError, ModelBundle, read_bundle, write_bundle

BUNDLE = ModelBundle("neumf", {"gmf_dim": 4}, 3, {"item.weight": np.arange(6, dtype=np.float32).reshape(3, 2)},
                     {"rounds": 2}, {"item_ids": np.array(["a", "b", "c"]), "item_popularity": np.array([3.0, 0, 1])})


def test_a_bundle_round_trips_with_its_catalog(tmp_path: Path) -> None:
    loaded = read_bundle(write_bundle(tmp_path / "b", BUNDLE))
    assert loaded.model == "neumf" and loaded.n_items == 3 and loaded.metadata == {"rounds": 2}
    assert np.array_equal(loaded.shared_parameters["item.weight"], BUNDLE.shared_parameters["item.weight"])
    assert loaded.catalog["item_ids"].tolist() == ["a", "b", "c"]


@pytest.mark.parametrize("name", ["parameters.npz", "catalog.npz"])
def test_an_edited_or_truncated_file_is_refused(tmp_path: Path, name: str) -> None:
    folder = write_bundle(tmp_path / "b", BUNDLE)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=f"{name}: missing or its sha256 does not match"):
        read_bundle(folder)


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b", BUNDLE)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema version 99"):
        read_bundle(folder)
