"""The Spotify Million Playlist Dataset loader, on slices the test writes in the MPD's own format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys_core.data.registry import load_dataset
from recsys_core.data.spotify import load_spotify_mpd, slice_files
from recsys_core.errors import DataFormatError, DatasetNotFoundError


def track(uri: str, pos: int) -> dict:
    return {"pos": pos, "track_uri": f"spotify:track:{uri}", "track_name": f"Song {uri}", "artist_name": "Band",
            "album_uri": "spotify:album:x", "duration_ms": 200000}


def write_slice(folder: Path, start: int, playlists: list[dict]) -> Path:
    path = folder / f"mpd.slice.{start}-{start + 999}.json"
    path.write_text(json.dumps({"info": {"slice": f"{start}-{start + 999}", "version": "v1"},
                                "playlists": playlists}))
    return path


def playlist(pid: int, uris: list[str]) -> dict:
    # The file lists tracks in any order; pos is the order in the playlist.
    tracks = [track(uri, pos) for pos, uri in enumerate(uris)]
    return {"pid": pid, "name": f"mix {pid}", "num_tracks": len(uris), "tracks": tracks[::-1]}


@pytest.fixture
def mpd(tmp_path: Path) -> Path:
    folder = tmp_path / "spotify-mpd"
    folder.mkdir()
    write_slice(folder, 1000, [playlist(1000, ["c", "d", "a"])])
    write_slice(folder, 0, [playlist(0, ["a", "b", "c"]), playlist(1, ["b", "c", "d", "e"])])
    return tmp_path


def test_playlists_are_users_tracks_items_and_position_the_order(mpd: Path) -> None:
    log = load_dataset("spotify-mpd", data_dir=mpd)
    assert (log.n_users, log.n_items, log.n_interactions) == (3, 5, 10)
    assert [p.name for p in slice_files(mpd / "spotify-mpd")] == ["mpd.slice.0-999.json", "mpd.slice.1000-1999.json"]
    for pid, expected in ((0, "abc"), (1, "bcde"), (1000, "cda")):
        user = int(np.flatnonzero(log.user_map.original_ids == pid)[0])
        rows = slice(log.user_offsets[user], log.user_offsets[user + 1])
        uris = log.item_map.original_ids[log.item_ids[rows]].tolist()
        assert [uri.removeprefix("spotify:track:") for uri in uris] == list(expected)
    assert "Song a — Band" in log.item_titles.tolist()


@pytest.mark.parametrize(("content", "words"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"info": {}}), "expected an object with a 'playlists' list"),
    (json.dumps({"playlists": [{"pid": "x", "tracks": []}]}), "playlist 0: needs an integer 'pid'"),
    (json.dumps({"playlists": [{"pid": 5, "tracks": [{"pos": 0}]}]}), "playlist pid 5, track 0: no track_uri"),
    (json.dumps({"playlists": [{"pid": 5, "tracks": [track("a", -1)]}]}), "pos must be a non-negative integer"),
    (json.dumps({"playlists": [{"pid": 0, "tracks": [track("a", 0)]}]}), "playlist pid 0 appears again"),
])
def test_a_malformed_slice_is_one_error_naming_the_file(mpd: Path, content: str, words: str) -> None:
    bad = mpd / "spotify-mpd" / "mpd.slice.2000-2999.json"
    bad.write_text(content)
    with pytest.raises(DataFormatError, match=words) as raised:
        load_spotify_mpd(slice_files(mpd / "spotify-mpd"))
    assert "mpd.slice.2000-2999.json" in str(raised.value)


def test_without_the_slices_the_error_says_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="AIcrowd"):
        load_dataset("spotify-mpd", data_dir=tmp_path)
