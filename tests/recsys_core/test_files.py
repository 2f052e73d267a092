"""Atomic writes: the old file or the new one, never a mix, and nothing left behind on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core.files import write_atomically


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")

    def half_then_crash(stream) -> None:
        stream.write(b"ne")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomically(path, half_then_crash)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


def test_the_previous_generation_is_kept_when_asked(tmp_path: Path) -> None:
    path, previous = tmp_path / "state.bin", tmp_path / "state.previous.bin"
    write_atomically(path, lambda stream: stream.write(b"one"))
    write_atomically(path, lambda stream: stream.write(b"two"), keep_previous=previous)
    assert path.read_bytes() == b"two" and previous.read_bytes() == b"one"
