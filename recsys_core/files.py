"""Writing files so that a crash never leaves half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object], keep_previous: Path | None = None) -> None:
    """Writes ``path`` through ``write`` into a temporary file beside it, fsyncs it and renames it into place.

    A reader sees the old file or the new one, never a mix; a process killed mid-write
    leaves the old file intact. With ``keep_previous`` the old file is first renamed
    there (a second generation to fall back on).
    """
    path = Path(path)
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
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
