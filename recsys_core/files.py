"""Writing files so that a crash never leaves half of one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from recsys_core.errors import FedrecError


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object], keep_previous: Path | None = None) -> None:
    """Writes ``path`` through ``write`` into a temporary file beside it, fsyncs it and renames it into place.

    A reader sees the old file or the new one, never a mix; a process killed mid-write
    leaves the old file intact. With ``keep_previous`` the old file is first renamed
    there (a second generation to fall back on).
    """
    path = Path(path)
    if path.is_dir():  # os.replace would fail only after the whole file was written, with a raw OSError
        raise FedrecError(f"{path}: is a folder; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # The rename is durable only once the folder's entry is.
    _fsync_folder(path.parent)


#: What reading a damaged ``.npz`` (or the JSON inside a state) can raise: numpy and zipfile report a flipped
#: byte as any of these (a bad CRC, a truncated member, an unknown compression method, a mangled header).
DAMAGED_FILE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, TypeError, EOFError, UnicodeDecodeError, NotImplementedError, zipfile.BadZipFile)


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def previous_folder(folder: Path) -> Path:
    """Where :func:`replace_folder` keeps the old folder for the instant between its two renames."""
    return folder.parent / f".{folder.name}.previous"


def replace_folder(staging: Path, folder: Path) -> None:
    """Puts the fully written ``staging`` folder in ``folder``'s place.

    A folder cannot be renamed over a non-empty one, so the old one moves aside first: a
    process killed between the two renames leaves the old folder whole at
    :func:`previous_folder`, and the next call (or a reader's error) puts it back.
    """
    previous = previous_folder(folder)
    if previous.exists() and not folder.exists():
        os.replace(previous, folder)  # an earlier call was killed between its renames
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        os.replace(folder, previous)
    os.replace(staging, folder)
    _fsync_folder(folder.parent)
    shutil.rmtree(previous, ignore_errors=True)


def staging_folder(folder: Path) -> Path:
    """A new empty folder beside ``folder`` to write its next version into."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
