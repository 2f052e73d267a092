"""Downloads without the network: a local HTTP server in a thread, file:// URLs, a closed port."""

from __future__ import annotations

import hashlib
import socket
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recsys_core.data.download import (
    ChecksumError,
    DownloadError,
    download_file,
    extract_zip,
)
from recsys_core.errors import DataFormatError, DatasetNotFoundError
from recsys_core.files import file_sha256

PAYLOAD = b"user\titem\n" * 5000


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A folder served over HTTP on 127.0.0.1; yields (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url(name: str) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_downloads_and_verifies_sha256(served: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = served
    (folder / "data.bin").write_bytes(PAYLOAD)
    destination = tmp_path / "cache" / "data.bin"
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    result = download_file(f"{base}/data.bin", destination, sha256=digest, show_progress=True)
    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert leftovers(destination.parent) == ["data.bin"]  # no temporary file left behind
    assert file_sha256(destination) == digest


def test_sha256_mismatch_deletes_the_download(served: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = served
    (folder / "data.bin").write_bytes(PAYLOAD)
    destination = tmp_path / "cache" / "data.bin"
    with pytest.raises(ChecksumError) as info:
        download_file(f"{base}/data.bin", destination, sha256="0" * 64, show_progress=False)
    message = str(info.value)
    assert "expected " + "0" * 64 in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert "deleted" in message
    assert leftovers(destination.parent) == []


def test_failed_download_keeps_the_previous_file(tmp_path: Path) -> None:
    source = tmp_path / "new.bin"
    source.write_bytes(b"new contents")
    destination = tmp_path / "cache" / "data.bin"
    destination.parent.mkdir()
    destination.write_bytes(b"old contents")
    with pytest.raises(ChecksumError):
        download_file(source.as_uri(), destination, md5="0" * 32, show_progress=False)
    assert destination.read_bytes() == b"old contents"
    assert leftovers(destination.parent) == ["data.bin"]


def test_file_url_with_md5(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    destination = tmp_path / "out" / "copy.bin"
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    download_file(source.as_uri(), destination, md5=md5, show_progress=False)
    assert destination.read_bytes() == PAYLOAD


def test_offline_names_file_folder_and_url(tmp_path: Path) -> None:
    url = closed_port_url("ml-100k.zip")
    destination = tmp_path / "datasets" / "ml-100k.zip"
    with pytest.raises(DatasetNotFoundError) as info:
        download_file(url, destination, timeout=5, show_progress=False)
    message = str(info.value)
    assert isinstance(info.value, DownloadError)
    assert "ml-100k.zip is missing from" in message
    assert str(destination.parent) in message
    assert f"download it by hand from {url}" in message
    assert leftovers(destination.parent) == []


def test_http_error_is_reported(served: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = served
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{base}/absent.zip", tmp_path / "absent.zip", show_progress=False)


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def test_extract_zip_drops_the_common_top_folder(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"ml-x/u.data": b"1", "ml-x/sub/u.item": b"2"})
    extracted = extract_zip(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in extracted) == [
        "sub/u.item",
        "u.data",
    ]
    assert (tmp_path / "out" / "u.data").read_bytes() == b"1"
    assert leftovers(tmp_path) == ["a.zip", "out"]  # the staging folder is gone


def test_extract_zip_keeps_layout_without_a_common_folder(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"Beauty.txt": b"1 2", "docs/README": b"r"})
    extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "Beauty.txt").is_file()
    assert (tmp_path / "out" / "docs" / "README").is_file()


def test_extract_zip_rejects_unsafe_and_broken_archives(tmp_path: Path) -> None:
    unsafe = make_zip(tmp_path / "unsafe.zip", {"../evil.txt": b"x"})
    with pytest.raises(DataFormatError, match="unsafe path"):
        extract_zip(unsafe, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="not a valid zip archive"):
        extract_zip(broken, tmp_path / "out")
