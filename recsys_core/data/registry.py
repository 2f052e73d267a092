"""The datasets fedrec knows by name: where their files live, how to fetch and load them.

The data directory is, in order: the ``data_dir`` argument, the environment
variable ``FEDREC_DATA_DIR``, or ``~/.cache/fedrec/datasets``. Each dataset has
its own folder in it (e.g. ``movielens-100k``) holding the files the loader
reads, exactly as the publisher's archive has them.

Archive checksums are the sha256 values pinned by TensorFlow Datasets
(``tensorflow_datasets/url_checksums/movielens.txt``). For ML-10M only the
publisher's MD5 (``ml-10m.zip.md5`` on files.grouplens.org) is pinned.
``ml-latest`` changes over time, so it cannot be pinned and is not verified.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

from recsys_core.data.amazon import load_amazon_sequences
from recsys_core.data.download import DownloadError, download_file, extract_zip
from recsys_core.data.interactions import InteractionLog
from recsys_core.data.movielens import (
    load_movielens_1m,
    load_movielens_10m,
    load_movielens_100k,
    load_movielens_csv,
)
from recsys_core.data.spotify import load_spotify_mpd, slice_files
from recsys_core.errors import ConfigError, DataFormatError, DatasetNotFoundError
from recsys_core.files import file_sha256

DATA_DIR_ENV = "FEDREC_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/fedrec/datasets")
_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
#: The slice every MPD copy has; the loader reads every slice beside it.
MPD_FIRST_SLICE = "mpd.slice.0-999.json"
_logger = logging.getLogger(__name__)

Loader = Callable[[Path], InteractionLog]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its folder and files, how to download and load it, and its terms.

    ``files`` are relative to ``data_dir / folder``; a dataset with no files is
    generated. ``sha256`` (or, where no sha256 is known, ``md5``) pins the archive
    at ``url``. ``file_sha256`` pins individual files where that is all there is.
    ``source`` says where to get the files by hand when there is no ``url``.
    """

    name: str
    description: str
    folder: str
    files: tuple[str, ...]
    loader: Loader
    license: str
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    file_sha256: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def generated(self) -> bool:
        """True for datasets made by code rather than read from files."""
        return not self.files


def _load_amazon_beauty(folder: Path) -> InteractionLog:
    return load_amazon_sequences(folder / "Beauty.txt", name="amazon-beauty")


def _load_amazon_sports(folder: Path) -> InteractionLog:
    return load_amazon_sequences(folder / "Sports_and_Outdoors.txt", name="amazon-sports")


def _load_spotify_mpd(folder: Path) -> InteractionLog:
    return load_spotify_mpd(slice_files(folder), name="spotify-mpd")


def _load_synthetic(folder: Path) -> InteractionLog:
    # Imported here so that the registry does not depend on the generator's module.
    from recsys_core.data.synthetic import SyntheticConfig, generate_synthetic

    return generate_synthetic(SyntheticConfig())


_GROUPLENS_TERMS = (
    "GroupLens research license (README in the archive): research use only; no "
    "redistribution and no commercial use without permission from GroupLens; cite "
    "F. M. Harper and J. A. Konstan, The MovieLens Datasets: History and Context, ACM TiiS 2015."
)
_LATEST_TERMS = (
    "GroupLens license (README.txt in the archive): research use; redistribution only under "
    "the same conditions; no commercial use without permission; cite Harper & Konstan 2015. "
    "A development dataset that changes over time: not for reporting research results."
)
_AMAZON_TERMS = (
    "No formal license: published by UCSD (J. McAuley) for research. Treat as research and "
    "non-commercial use only; cite R. He and J. McAuley, WWW 2016, and J. McAuley et al., "
    "SIGIR 2015."
)
_ML_CSV_FILES = ("ratings.csv", "movies.csv")
_ML_DAT_FILES = ("ratings.dat", "movies.dat")

_SPECS = (
    DatasetSpec(
        name="ml-100k",
        description="MovieLens 100K: 100,000 ratings (1-5) by 943 users of 1,682 movies, "
        "with 19 genres and release years (1998).",
        folder="movielens-100k",
        files=("u.data", "u.item"),
        loader=load_movielens_100k,
        license=_GROUPLENS_TERMS,
        url=f"{_GROUPLENS}/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    ),
    DatasetSpec(
        name="ml-1m",
        description="MovieLens 1M: 1,000,209 ratings (1-5) by 6,040 users of 3,706 movies, "
        "with 18 genres and years (2003).",
        folder="movielens-1m",
        files=_ML_DAT_FILES,
        loader=load_movielens_1m,
        license=_GROUPLENS_TERMS,
        url=f"{_GROUPLENS}/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    ),
    DatasetSpec(
        name="ml-10m",
        description="MovieLens 10M: about 10 million half-star ratings, with genres (2009).",
        folder="movielens-10m",
        files=_ML_DAT_FILES,
        loader=load_movielens_10m,
        license=_GROUPLENS_TERMS,
        url=f"{_GROUPLENS}/ml-10m.zip",
        md5="ce571fd55effeba0271552578f2648bd",
    ),
    DatasetSpec(
        name="ml-20m",
        description="MovieLens 20M: about 20 million half-star ratings, with genres (2015).",
        folder="movielens-20m",
        files=_ML_CSV_FILES,
        loader=partial(load_movielens_csv, name="ml-20m"),
        license=_GROUPLENS_TERMS,
        url=f"{_GROUPLENS}/ml-20m.zip",
        sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
    ),
    DatasetSpec(
        name="ml-25m",
        description="MovieLens 25M: about 25 million half-star ratings, with genres (2019).",
        folder="movielens-25m",
        files=_ML_CSV_FILES,
        loader=partial(load_movielens_csv, name="ml-25m"),
        license=_GROUPLENS_TERMS,
        url=f"{_GROUPLENS}/ml-25m.zip",
        sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
    ),
    DatasetSpec(
        name="ml-latest-small",
        description="MovieLens latest-small: 100,836 half-star ratings by 610 users of "
        "9,724 movies, with genres (2018 snapshot).",
        folder="movielens-latest-small",
        files=_ML_CSV_FILES,
        loader=partial(load_movielens_csv, name="ml-latest-small"),
        license=_LATEST_TERMS,
        url=f"{_GROUPLENS}/ml-latest-small.zip",
        sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    ),
    DatasetSpec(
        name="ml-latest",
        description="MovieLens latest (full): tens of millions of half-star ratings; "
        "changes over time, so its download is not checksum-verified.",
        folder="movielens-latest",
        files=_ML_CSV_FILES,
        loader=partial(load_movielens_csv, name="ml-latest"),
        license=_LATEST_TERMS,
        url=f"{_GROUPLENS}/ml-latest.zip",
    ),
    DatasetSpec(
        name="amazon-beauty",
        description="Amazon Beauty 5-core as item sequences: 198,502 interactions by "
        "22,363 users of 12,101 items; no ratings, timestamps are sequence positions.",
        folder="amazon-beauty-5core-seq",
        files=("Beauty.txt",),
        loader=_load_amazon_beauty,
        license=_AMAZON_TERMS,
        file_sha256=MappingProxyType(
            {"Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"}
        ),
        source="There is no official archive of this preprocessed file. It is derived from "
        "the 2014 Amazon review data (http://jmcauley.ucsd.edu/data/amazon/) and is shipped "
        "as data/Beauty.txt with sequential-recommendation code such as "
        "https://github.com/salesforce/ICLRec.",
    ),
    DatasetSpec(
        name="amazon-sports",
        description="Amazon Sports and Outdoors 5-core as item sequences: 296,337 interactions by "
        "35,598 users of 18,357 items; no ratings, timestamps are sequence positions. The "
        "largest federation here, for user-level DP and cross-device scale.",
        folder="amazon-sports-5core-seq",
        files=("Sports_and_Outdoors.txt",),
        loader=_load_amazon_sports,
        license=_AMAZON_TERMS,
        file_sha256=MappingProxyType(
            {"Sports_and_Outdoors.txt": "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"}
        ),
        source="Derived, like amazon-beauty, from the 2014 Amazon review data "
        "(http://jmcauley.ucsd.edu/data/amazon/), in the preprocessed sequence form of "
        "sequential-recommendation benchmarks such as S3-Rec and ICLRec.",
    ),
    DatasetSpec(
        name="spotify-mpd",
        description="Spotify Million Playlist Dataset: playlists as users, tracks as items, a track's "
        "position as its order; every slice in the folder is read (the full set is 66M rows "
        "by 1M playlists: copy a few slices to work with fewer).",
        folder="spotify-mpd",
        files=(MPD_FIRST_SLICE,),
        loader=_load_spotify_mpd,
        license="Spotify's MPD terms (AIcrowd challenge page): non-commercial research only; no "
        "redistribution; cite Chen et al., Recsys Challenge 2018.",
        source="The MPD needs a free AIcrowd account (https://www.aicrowd.com/challenges/"
        "spotify-million-playlist-dataset-challenge); download it and copy the data/ slices you want.",
    ),
    DatasetSpec(
        name="synthetic",
        description="Synthetic interactions with taste clusters, popularity skew and drift, "
        "generated with the default SyntheticConfig.",
        folder="",
        files=(),
        loader=_load_synthetic,
        license="Generated by fedrec; no third-party terms.",
    ),
)
_REGISTRY: Mapping[str, DatasetSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$FEDREC_DATA_DIR``, else the default cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env).expanduser() if from_env else DEFAULT_DATA_DIR.expanduser()


def list_datasets() -> list[DatasetSpec]:
    """Every registered dataset, in a stable order."""
    return list(_SPECS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name``; an unknown name raises :class:`ConfigError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {known}") from None


def dataset_folder(name: str, data_dir: str | Path | None = None) -> Path:
    """Where the files of dataset ``name`` live."""
    return resolve_data_dir(data_dir) / get_dataset_spec(name).folder


def missing_files(spec: DatasetSpec, folder: Path) -> list[str]:
    """The spec's required files that are not in ``folder``."""
    return [name for name in spec.files if not (folder / name).is_file()]


def load_dataset(
    name: str, data_dir: str | Path | None = None, download: bool = False
) -> InteractionLog:
    """Loads a registered dataset, downloading it first when ``download`` is true.

    Missing files raise :class:`DatasetNotFoundError` saying how to get them.
    """
    spec = get_dataset_spec(name)
    if spec.generated:
        return spec.loader(Path())
    folder = dataset_folder(name, data_dir)
    missing = missing_files(spec, folder)
    if missing and download and spec.url is not None:
        fetch_dataset(spec, folder)
    elif missing:
        raise DatasetNotFoundError(_not_found_message(spec, folder, missing))
    return spec.loader(folder)


def download_dataset(
    name: str, data_dir: str | Path | None = None, show_progress: bool = True
) -> Path:
    """Downloads and unpacks dataset ``name`` unless its files are present; returns its folder."""
    spec = get_dataset_spec(name)
    if spec.generated:
        raise ConfigError(f"dataset {name!r} is generated; there is nothing to download")
    folder = dataset_folder(name, data_dir)
    missing = missing_files(spec, folder)
    if not missing:
        return folder
    if spec.url is None:
        raise DatasetNotFoundError(_not_found_message(spec, folder, missing))
    return fetch_dataset(spec, folder, show_progress=show_progress)


def fetch_dataset(spec: DatasetSpec, folder: Path, show_progress: bool = True) -> Path:
    """Downloads the spec's archive, verifies it, unzips it into ``folder`` and deletes it."""
    if spec.url is None:
        raise DatasetNotFoundError(_not_found_message(spec, folder, list(spec.files)))
    if spec.sha256 is None and spec.md5 is None:
        _logger.warning("%s has no pinned checksum; %s is not verified", spec.name, spec.url)
    archive = folder / Path(urlparse(spec.url).path).name
    try:
        download_file(
            spec.url, archive, sha256=spec.sha256, md5=spec.md5, show_progress=show_progress
        )
    except DownloadError as error:
        raise DatasetNotFoundError(_offline_message(spec, folder, error.reason)) from error
    try:
        extract_zip(archive, folder)
    finally:
        archive.unlink(missing_ok=True)
    missing = missing_files(spec, folder)
    if missing:
        raise DataFormatError(spec.url, f"the archive has no {', '.join(missing)}")
    return folder


def _not_found_message(spec: DatasetSpec, folder: Path, missing: list[str]) -> str:
    if folder.parent.is_file():  # --data-dir names a file: nothing can be placed "in" it
        return (f"the data directory {folder.parent} is a file, not a folder; pass --data-dir (or data.data_dir, "
                f"${DATA_DIR_ENV}) the folder that holds {folder.name}/, or use --dataset file with "
                f"data.path = \"{folder.parent}\" for your own log")
    where = (
        f"dataset {spec.name!r} is not in {folder} (missing: {', '.join(missing)}). "
        f"The data directory comes from data_dir, ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR}."
    )
    if spec.url is None:
        return f"{where} {spec.source} Place {', '.join(spec.files)} in {folder}."
    return (
        f"{where} Run `fedrec datasets download {spec.name}` to fetch it, or download "
        f"{spec.url}, unzip it and place {', '.join(spec.files)} in {folder}."
    )


def _offline_message(spec: DatasetSpec, folder: Path, reason: str) -> str:
    return (
        f"could not download dataset {spec.name!r} from {spec.url} ({reason}). "
        f"{', '.join(missing_files(spec, folder))} missing from {folder}: download "
        f"{spec.url} by hand and unzip it so that {', '.join(spec.files)} lie directly in "
        f"{folder}."
    )


def dataset_info(
    name: str, data_dir: str | Path | None = None, with_summary: bool = True
) -> dict[str, Any]:
    """What a user wants to know about a dataset before using it.

    Keys: ``name``, ``description``, ``present``, ``path``, ``files`` (file name to
    whether it exists), ``checksums`` (pinned file to whether it matches, for
    present files), ``license``, ``url``, ``source`` and ``summary`` (the
    log's counts when present and ``with_summary``; loading large datasets takes a while).
    """
    spec = get_dataset_spec(name)
    folder = None if spec.generated else dataset_folder(name, data_dir)
    files = {} if folder is None else {f: (folder / f).is_file() for f in spec.files}
    present = all(files.values())
    checksums = {
        f: file_sha256(folder / f) == digest
        for f, digest in spec.file_sha256.items()
        if folder is not None and files.get(f)
    }
    summary = load_dataset(name, data_dir).summary() if present and with_summary else None
    return {
        "name": spec.name,
        "description": spec.description,
        "present": present,
        "path": None if folder is None else str(folder),
        "files": files,
        "checksums": checksums,
        "license": spec.license,
        "url": spec.url,
        "source": spec.source,
        "summary": summary,
    }
