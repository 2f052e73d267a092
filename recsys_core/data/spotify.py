"""Loader for the Spotify Million Playlist Dataset (MPD): playlists as users, tracks as items.

The MPD comes as 1,000 JSON slices (``data/mpd.slice.0-999.json`` ... ``mpd.slice.999999-999999.json``),
each ``{"info": {...}, "playlists": [{"pid": 0, "name": "...", "tracks": [{"pos": 0, "track_uri":
"spotify:track:...", "track_name": "...", "artist_name": "...", ...}, ...]}, ...]}``. A playlist is
a user (its ``pid``), a track a item (its ``track_uri``), and a track's position in the playlist is
its order (the timestamp), so leave-one-out holds out each playlist's last track. Item titles are
"track — artist". The full dataset is 66 million rows; copy a subset of the slices into the folder
to work with fewer (every slice present is read, in the order of its first pid).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.data.interactions import IdMap, InteractionLog
from recsys_core.errors import DataFormatError

SLICE_PATTERN = "mpd.slice.*.json"
_SLICE_START = re.compile(r"mpd\.slice\.(\d+)-(\d+)\.json$")


def slice_files(folder: str | Path) -> list[Path]:
    """The MPD slices in ``folder`` (or its ``data/``), ordered by their first playlist id."""
    folder = Path(folder)
    found = sorted(folder.glob(SLICE_PATTERN)) or sorted((folder / "data").glob(SLICE_PATTERN))

    def start(path: Path) -> int:
        match = _SLICE_START.search(path.name)
        return int(match.group(1)) if match else -1
    return sorted(found, key=start)


def load_spotify_mpd(paths: Iterable[str | Path], name: str = "spotify-mpd") -> InteractionLog:
    """Reads MPD slices; a malformed slice, playlist or track is one :class:`DataFormatError` naming it."""
    users: list[int] = []
    items: list[str] = []
    positions: list[int] = []
    titles: dict[str, str] = {}
    seen_pids: dict[int, Path] = {}
    files = [Path(path) for path in paths]
    if not files:
        raise DataFormatError("spotify-mpd", f"no MPD slices ({SLICE_PATTERN}) found")
    for path in files:
        for pid, tracks in _playlists(path):
            if pid in seen_pids:
                raise DataFormatError(path, f"playlist pid {pid} appears again (first in {seen_pids[pid]})")
            seen_pids[pid] = path
            for index, track in enumerate(tracks):
                where = f"playlist pid {pid}, track {index}"
                uri, position = track.get("track_uri"), track.get("pos", index)
                if not isinstance(uri, str) or not uri:
                    raise DataFormatError(path, f"{where}: no track_uri")
                if isinstance(position, bool) or not isinstance(position, int) or position < 0:
                    raise DataFormatError(path, f"{where}: pos must be a non-negative integer, got {position!r}")
                users.append(pid)
                items.append(uri)
                positions.append(position)
                if uri not in titles:
                    titles[uri] = f"{track.get('track_name', uri)} — {track.get('artist_name', '?')}"
    if not users:
        raise DataFormatError(files[0], "the slices hold no tracks")
    user_map, user_ids = IdMap.from_values(np.asarray(users, dtype=np.int64))
    item_map, item_ids = IdMap.from_values(np.asarray(items))
    item_titles = np.array([titles[str(uri)] for uri in item_map.original_ids.tolist()])
    return InteractionLog.from_arrays(user_ids, item_ids, np.asarray(positions, dtype=np.int64), None,
                                      user_map, item_map, name=name, item_titles=item_titles)


def _playlists(path: Path) -> Iterable[tuple[int, list[dict[str, Any]]]]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(path, f"unreadable ({error})") from None
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"not valid JSON ({error.msg}, column {error.colno})", line=error.lineno) \
            from None
    playlists = content.get("playlists") if isinstance(content, dict) else None
    if not isinstance(playlists, list):
        raise DataFormatError(path, "not an MPD slice: expected an object with a 'playlists' list")
    for index, playlist in enumerate(playlists):
        if not isinstance(playlist, dict):
            raise DataFormatError(path, f"playlist {index}: expected an object")
        pid, tracks = playlist.get("pid"), playlist.get("tracks")
        if isinstance(pid, bool) or not isinstance(pid, int) or not isinstance(tracks, list) \
                or not all(isinstance(track, dict) for track in tracks):
            raise DataFormatError(path, f"playlist {index}: needs an integer 'pid' and a list of track objects")
        yield pid, tracks
