"""Helpers shared by the data tests (imported by module name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from recsys_core.errors import DataFormatError


@contextmanager
def raises_at(path: Path, line: int | None, *fragments: str) -> Iterator[None]:
    """Expects a DataFormatError at ``line`` whose message names the file and the fragments."""
    with pytest.raises(DataFormatError) as info:
        yield
    message = str(info.value)
    assert info.value.line == line
    assert str(path) in message
    if line is not None:
        assert f"line {line}:" in message
    for fragment in fragments:
        assert fragment in message
