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


def same_bundle(first: ModelBundle, second: ModelBundle) -> bool:
    return (first.model, first.options, first.n_items, first.metadata) == \
        (second.model, second.options, second.n_items, second.metadata) and \
        all(np.array_equal(first.shared_parameters[n], second.shared_parameters[n]) for n in first.shared_parameters)


@pytest.mark.parametrize("name", ["manifest.json", "parameters.npz", "catalog.npz"])
def test_every_flipped_byte_is_refused_with_a_bundle_error_or_changes_nothing(tmp_path: Path, name: str) -> None:
    folder = write_bundle(tmp_path / "b", BUNDLE)
    original = (folder / name).read_bytes()
    positions = np.random.default_rng(5).choice(len(original), size=min(100, len(original)), replace=False)
    refused = 0
    for position in positions:
        damaged = bytearray(original)
        damaged[position] ^= 0xFF
        (folder / name).write_bytes(bytes(damaged))
        try:
            loaded = read_bundle(folder)
        except BundleError:
            refused += 1
        else:  # a flip in JSON whitespace, say, leaves the content as it was
            assert same_bundle(loaded, BUNDLE), position
    (folder / name).write_bytes(original)
    assert refused >= 0.9 * len(positions)


def test_a_rewrite_replaces_the_old_bundle_whole_and_a_kill_between_renames_is_named(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b", BUNDLE)
    newer = ModelBundle("neumf", {"gmf_dim": 4}, 3, {"item.weight": np.ones((3, 2), dtype=np.float32)}, {"rounds": 3})
    write_bundle(folder, newer)
    assert same_bundle(read_bundle(folder), newer) and not (folder / "catalog.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging or previous folder left behind
    # A writer killed between its two renames leaves the old bundle whole, beside the missing one.
    folder.rename(tmp_path / ".b.previous")
    with pytest.raises(BundleError, match=r"b: missing, but an interrupted update left the previous bundle at "):
        read_bundle(folder)
    write_bundle(folder, BUNDLE)  # the next write puts things right
    assert same_bundle(read_bundle(folder), BUNDLE) and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
