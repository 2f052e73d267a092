"""Downloading dataset archives: progress bar, pinned checksums, atomic writes, unzipping.

Only the standard library's ``urllib`` talks to the network. A file is written
to a temporary name next to its destination and renamed into place only after
its checksum matched, so an interrupted or corrupted download never looks like
a finished one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from recsys_core.errors import DataFormatError, DatasetNotFoundError

_BLOCK_BYTES = 1 << 20
_NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, TimeoutError)


class ChecksumError(DataFormatError):
    """A downloaded file does not have its pinned checksum; the file was deleted."""


class DownloadError(DatasetNotFoundError):
    """A file could not be fetched (offline, HTTP error, timeout); ``reason`` says why."""

    def __init__(self, message: str, url: str, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


def download_file(
    url: str,
    destination: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    show_progress: bool = True,
) -> Path:
    """Downloads ``url`` to ``destination`` and verifies the pinned checksum(s).

    Raises :class:`DatasetNotFoundError` when the file cannot be fetched (naming the
    file, its folder and the URL to fetch it from by hand) and :class:`ChecksumError`
    when it does not match the pin; in both cases nothing is left at ``destination``.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            digests = _fetch(url, sink, timeout, show_progress, destination)
        _verify(url, destination, digests, sha256=sha256, md5=md5)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return destination


def _fetch(
    url: str, sink: BinaryIO, timeout: float, show_progress: bool, destination: Path
) -> dict[str, str]:
    """Streams ``url`` into ``sink``; returns the sha256 and md5 of what was written."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = _content_length(response)
            with _progress(show_progress) as progress:
                task = progress.add_task(destination.name, total=total)
                while block := response.read(_BLOCK_BYTES):
                    sink.write(block)
                    sha256.update(block)
                    md5.update(block)
                    progress.advance(task, len(block))
    except _NETWORK_ERRORS as error:
        reason = _reason(error)
        raise DownloadError(_offline_message(url, destination, reason), url, reason) from error
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def _content_length(response: object) -> int | None:
    length = getattr(response, "headers", {}).get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not show,
    )


def _reason(error: BaseException) -> str:
    # An HTTPError's own text carries the status code; other URLErrors wrap a socket error.
    if isinstance(error, urllib.error.HTTPError):
        return str(error)
    return str(getattr(error, "reason", None) or error)


def _offline_message(url: str, destination: Path, reason: str) -> str:
    return (
        f"could not download {url} ({reason}). {destination.name} is missing from "
        f"{destination.parent}: download it by hand from {url} and put it in that folder."
    )


def _verify(
    url: str, destination: Path, digests: dict[str, str], *, sha256: str | None, md5: str | None
) -> None:
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None and digests[algorithm] != expected.lower():
            raise ChecksumError(
                destination,
                f"{algorithm} of the download from {url} is {digests[algorithm]}, expected "
                f"{expected.lower()}; the download was deleted. The transfer may have been "
                "corrupted (try again) or the file on the server has changed.",
            )


def extract_zip(archive: str | Path, destination: str | Path) -> list[Path]:
    """Unzips ``archive`` into ``destination`` and returns the extracted files.

    A single top-level folder shared by every member (``ml-100k/`` in the MovieLens
    zips) is dropped, so the files land directly in ``destination``. Members are
    extracted to a temporary folder first and moved into place one by one.
    """
    archive, destination = Path(archive), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        relative = _extract_to(archive, staging)
        extracted = []
        for path in relative:
            target = destination / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / path, target)
            extracted.append(target)
        return extracted
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_to(archive: Path, staging: Path) -> list[Path]:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if not info.is_dir()]
            names = [_safe_member(archive, info.filename) for info in members]
            strip = _common_top_folder(names)
            relative = [Path(*name.parts[strip:]) for name in names]
            for info, path in zip(members, relative, strict=True):
                (staging / path).parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, open(staging / path, "wb") as sink:
                    shutil.copyfileobj(source, sink, _BLOCK_BYTES)
    except zipfile.BadZipFile as error:
        raise DataFormatError(archive, f"not a valid zip archive ({error})") from None
    return relative


def _safe_member(archive: Path, name: str) -> PurePosixPath:
    member = PurePosixPath(name)
    if member.is_absolute() or ".." in member.parts:
        raise DataFormatError(archive, f"unsafe path {name!r} in the archive")
    return member


def _common_top_folder(names: list[PurePosixPath]) -> int:
    """1 when every member lies under the same top-level folder, else 0."""
    tops = {name.parts[0] for name in names if len(name.parts) > 1}
    return int(len(tops) == 1 and all(len(name.parts) > 1 for name in names))
