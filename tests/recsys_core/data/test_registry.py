"""The dataset registry: names, data directory, loading, downloading (offline) and info."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import zipfile
from pathlib import Path

import pytest

from recsys_core.data import (
    dataset_info,
    download_dataset,
    get_dataset_spec,
    list_datasets,
    load_dataset,
)
from recsys_core.data.download import ChecksumError
from recsys_core.data.registry import DATA_DIR_ENV, fetch_dataset, resolve_data_dir
from recsys_core.errors import ConfigError, DatasetNotFoundError

NAMES = [
    "ml-100k",
    "ml-1m",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-latest-small",
    "ml-latest",
    "amazon-beauty",
    "amazon-sports",
    "spotify-mpd",
    "synthetic",
]
# A tiny stand-in for ml-100k.zip, written by the tests (never the real files).
TINY_U_DATA = b"1\t10\t4\t881250949\n2\t10\t5\t891717742\n2\t20\t1\t878887116\n"
TINY_U_ITEM = (
    b"10|Heat (1995)|01-Jan-1995||http://x|0|1|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0\n"
    b"20|Cur\xe9 (1996)|01-Jan-1996||http://y|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)


def test_list_and_get() -> None:
    assert [spec.name for spec in list_datasets()] == NAMES
    spec = get_dataset_spec("ml-100k")
    assert spec.folder == "movielens-100k" and spec.files == ("u.data", "u.item")
    assert "no redistribution" in spec.license
    with pytest.raises(ConfigError) as info:
        get_dataset_spec("ml-2m")
    assert "'ml-2m'" in str(info.value)
    for name in NAMES:
        assert name in str(info.value)


def test_pins_are_well_formed() -> None:
    for spec in list_datasets():
        if spec.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        if spec.md5 is not None:
            assert re.fullmatch(r"[0-9a-f]{32}", spec.md5), spec.name
        if spec.url is not None and spec.name != "ml-latest":
            assert spec.sha256 or spec.md5, f"{spec.name} downloads unverified"
    beauty = get_dataset_spec("amazon-beauty")
    assert beauty.url is None and "Beauty.txt" in beauty.file_sha256


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "fedrec" / "datasets"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_load_from_data_dir_and_env(datasets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (datasets_dir / "movielens-100k").is_dir():
        pytest.skip("movielens-100k not in the shared datasets")
    log = load_dataset("ml-100k", data_dir=datasets_dir)
    assert (log.n_users, log.n_items, log.n_interactions) == (943, 1682, 100_000)
    monkeypatch.setenv(DATA_DIR_ENV, str(datasets_dir))
    assert load_dataset("ml-100k").n_interactions == 100_000
    # Present files are not downloaded again (the shared folder is read-only anyway).
    assert download_dataset("ml-100k") == datasets_dir / "movielens-100k"


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("ml-1m", data_dir=tmp_path)
    message = str(info.value)
    assert "`fedrec datasets download ml-1m`" in message
    assert str(tmp_path / "movielens-1m") in message
    assert "ratings.dat, movies.dat" in message
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("amazon-beauty", data_dir=tmp_path, download=True)
    message = str(info.value)
    assert "fedrec datasets download" not in message
    assert "no official archive" in message and "Beauty.txt" in message


def test_dataset_info(datasets_dir: Path, tmp_path: Path) -> None:
    absent = dataset_info("ml-25m", data_dir=tmp_path)
    assert absent["present"] is False and absent["summary"] is None
    assert absent["files"] == {"ratings.csv": False, "movies.csv": False}
    assert absent["path"] == str(tmp_path / "movielens-25m")
    if not (datasets_dir / "amazon-beauty-5core-seq").is_dir():
        pytest.skip("amazon-beauty-5core-seq not in the shared datasets")
    info = dataset_info("amazon-beauty", data_dir=datasets_dir)
    assert info["present"] is True
    assert info["checksums"] == {"Beauty.txt": True}
    assert info["summary"]["users"] == 22_363 and info["summary"]["interactions"] == 198_502


def test_synthetic_needs_no_files(tmp_path: Path) -> None:
    pytest.importorskip("recsys_core.data.synthetic")
    log = load_dataset("synthetic", data_dir=tmp_path)
    assert log.n_interactions > 0
    assert list(tmp_path.iterdir()) == []


def tiny_archive(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("ml-100k/u.data", TINY_U_DATA)
        bundle.writestr("ml-100k/u.item", TINY_U_ITEM)
        bundle.writestr("ml-100k/README", b"tiny")
    return path.read_bytes()


def test_fetch_then_load(tmp_path: Path) -> None:
    archive = tmp_path / "ml-100k.zip"
    digest = hashlib.sha256(tiny_archive(archive)).hexdigest()
    spec = dataclasses.replace(get_dataset_spec("ml-100k"), url=archive.as_uri(), sha256=digest)
    folder = tmp_path / "data" / "movielens-100k"
    assert fetch_dataset(spec, folder, show_progress=False) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["README", "u.data", "u.item"]
    log = load_dataset("ml-100k", data_dir=tmp_path / "data")
    assert (log.n_users, log.n_items, log.n_interactions) == (2, 2, 3)
    assert log.item_titles.tolist() == ["Heat (1995)", "Curé (1996)"]


def test_fetch_with_wrong_checksum_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "ml-100k.zip"
    tiny_archive(archive)
    spec = dataclasses.replace(get_dataset_spec("ml-100k"), url=archive.as_uri())
    folder = tmp_path / "data" / "movielens-100k"
    with pytest.raises(ChecksumError):
        fetch_dataset(spec, folder, show_progress=False)
    assert list(folder.iterdir()) == []


def test_fetch_offline(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ml-1m.zip"
    spec = dataclasses.replace(get_dataset_spec("ml-1m"), url=url)
    folder = tmp_path / "movielens-1m"
    with pytest.raises(DatasetNotFoundError) as info:
        fetch_dataset(spec, folder, show_progress=False)
    message = str(info.value)
    assert "ratings.dat, movies.dat missing from" in message
    assert str(folder) in message
    assert f"download {url} by hand" in message
