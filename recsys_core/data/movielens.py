"""Loaders for the GroupLens MovieLens datasets (100K, 1M, 10M, 20M, 25M, latest).

Every loader takes the folder that holds the dataset's files and returns an
:class:`InteractionLog` whose item map covers the rated movies only. Item
features are genre indicators, ``year``: the release year scaled to [0, 1] over
the rated movies' year range, and ``log_age``: log(1 + years before the newest
rated movie), scaled to [0, 1] by the same for the oldest. ``log_age`` carries the
same information as ``year`` but spreads the recent years apart, where most
interactions fall (half of ML-100K's ratings are of films at most four years older
than the newest; docs/benchmarks.md measures what it adds to the content model). A
movie whose year is unknown gets the mean of the known values of each, so the
missing value does not pull it towards either end of the range. A rated movie
missing from the movie file gets no genres, those means and an empty title.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys_core.data.interactions import IdMap, InteractionLog, ItemFeatures
from recsys_core.data.parsing import Field, Table, read_table
from recsys_core.errors import DataFormatError

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
NO_GENRES = "(no genres listed)"
YEAR_FEATURES = ("year", "log_age")

RATING_FIELDS = (
    Field("user", "int", "user id"),
    Field("item", "int", "item id"),
    Field("rating", "float", "rating"),
    Field("timestamp", "int", "timestamp"),
)
_ML100K_ITEM_FIELDS = (
    Field("item", "int", "item id"),
    Field("title", "str"),
    Field("release_date", "str", "release date"),
    Field("video_release_date", "skip"),
    Field("imdb_url", "skip"),
    *(Field(f"genre:{genre}", "int", f"{genre} genre flag") for genre in ML100K_GENRES),
)
_MOVIE_FIELDS = (
    Field("item", "int", "movie id"),
    Field("title", "str"),
    Field("genres", "str"),
)
_CSV_RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
_CSV_MOVIES_HEADER = ("movieId", "title", "genres")
# "Title (1995)"; ML-latest also has ranges such as "(2006-2007)" and trailing spaces.
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


def load_movielens_100k(folder: str | Path, name: str = "ml-100k") -> InteractionLog:
    """MovieLens 100K: ``u.data`` (tab-separated) and ``u.item`` (``|``-separated, Latin-1)."""
    folder = Path(folder)
    ratings = read_table(folder / "u.data", RATING_FIELDS, delimiter="\t", encoding="latin-1")
    movies = read_table(
        folder / "u.item",
        _ML100K_ITEM_FIELDS,
        delimiter="|",
        encoding="latin-1",
        with_line_numbers=True,
    )
    genres = np.stack([movies[f"genre:{genre}"] for genre in ML100K_GENRES], axis=1)
    catalogue = _Catalogue(
        path=folder / "u.item",
        movie_ids=movies["item"],
        line_numbers=movies.line_numbers,
        genres=genres.astype(np.float32),
        genre_names=ML100K_GENRES,
        years=_years(movies["release_date"], _DATE_YEAR),
        titles=movies["title"],
    )
    return _build_log(name, ratings, catalogue)


def load_movielens_1m(folder: str | Path, name: str = "ml-1m") -> InteractionLog:
    """MovieLens 1M: ``ratings.dat`` and ``movies.dat`` (``::``-separated, Latin-1)."""
    return _load_dat(Path(folder), name, encoding="latin-1")


def load_movielens_10m(folder: str | Path, name: str = "ml-10m") -> InteractionLog:
    """MovieLens 10M: ``ratings.dat`` and ``movies.dat`` (``::``-separated, UTF-8)."""
    return _load_dat(Path(folder), name, encoding="utf-8")


def load_movielens_csv(folder: str | Path, name: str) -> InteractionLog:
    """MovieLens 20M, 25M and latest(-small): ``ratings.csv`` and ``movies.csv`` with headers."""
    folder = Path(folder)
    ratings = read_table(
        folder / "ratings.csv", RATING_FIELDS, delimiter=",", header=_CSV_RATINGS_HEADER
    )
    movies = read_table(
        folder / "movies.csv",
        _MOVIE_FIELDS,
        delimiter=",",
        header=_CSV_MOVIES_HEADER,
        with_line_numbers=True,
    )
    return _build_log(name, ratings, _genre_list_catalogue(folder / "movies.csv", movies))


def _load_dat(folder: Path, name: str, encoding: str) -> InteractionLog:
    ratings = read_table(folder / "ratings.dat", RATING_FIELDS, delimiter="::", encoding=encoding)
    movies = read_table(
        folder / "movies.dat",
        _MOVIE_FIELDS,
        delimiter="::",
        encoding=encoding,
        with_line_numbers=True,
    )
    return _build_log(name, ratings, _genre_list_catalogue(folder / "movies.dat", movies))


@dataclass(frozen=True)
class _Catalogue:
    """Per-movie metadata in movie-file order; movie ids must be unique."""

    path: Path
    movie_ids: np.ndarray
    line_numbers: np.ndarray | None
    genres: np.ndarray  # float32 [n_movies, n_genres]
    genre_names: tuple[str, ...]
    years: np.ndarray  # float, NaN where unknown
    titles: np.ndarray

    def __post_init__(self) -> None:
        _check_unique(self.path, self.movie_ids, self.line_numbers)


def _genre_list_catalogue(path: Path, movies: Table) -> _Catalogue:
    """Genres as ``A|B|C`` strings, with the vocabulary collected from the file."""
    lists = [genres.split("|") for genres in movies["genres"].tolist()]
    vocabulary = sorted({g for genres in lists for g in genres} - {NO_GENRES, ""})
    column = {genre: index for index, genre in enumerate(vocabulary)}
    matrix = np.zeros((len(lists), len(vocabulary)), dtype=np.float32)
    for row, genres in enumerate(lists):
        matrix[row, [column[g] for g in genres if g in column]] = 1.0
    return _Catalogue(
        path=path,
        movie_ids=movies["item"],
        line_numbers=movies.line_numbers,
        genres=matrix,
        genre_names=tuple(vocabulary),
        years=_years(movies["title"], _TITLE_YEAR),
        titles=movies["title"],
    )


def _years(texts: np.ndarray, pattern: re.Pattern[str]) -> np.ndarray:
    """The year in each text, NaN where there is none."""
    years = np.full(len(texts), np.nan)
    for index, text in enumerate(texts.tolist()):
        match = pattern.search(text)
        if match:
            years[index] = float(match.group(1))
    return years


def _check_unique(path: Path, ids: np.ndarray, line_numbers: np.ndarray | None) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    duplicated = np.flatnonzero(counts > 1)
    if not len(duplicated):
        return
    value = unique[duplicated[0]]
    rows = np.flatnonzero(ids == value)
    lines = rows + 1 if line_numbers is None else line_numbers[rows]
    raise DataFormatError(
        path,
        f"movie id {value} appears more than once (lines {int(lines[0])} and {int(lines[1])})",
        line=int(lines[1]),
    )


def _build_log(name: str, ratings: Table, catalogue: _Catalogue) -> InteractionLog:
    user_map, user_ids = IdMap.from_values(ratings["user"])
    item_map, item_ids = IdMap.from_values(ratings["item"])
    rows = _rows_of(item_map.original_ids, catalogue.movie_ids)
    known = rows >= 0
    genres = np.zeros((len(item_map), len(catalogue.genre_names)), dtype=np.float32)
    genres[known] = catalogue.genres[rows[known]]
    years = np.full(len(item_map), np.nan)
    years[known] = catalogue.years[rows[known]]
    values = np.concatenate([genres, _year_features(years)], axis=1)
    titles = np.where(known, catalogue.titles[np.maximum(rows, 0)], "")
    return InteractionLog.from_arrays(
        user_ids,
        item_ids,
        ratings["timestamp"],
        ratings["rating"],
        user_map,
        item_map,
        name=name,
        item_features=ItemFeatures(values, (*catalogue.genre_names, *YEAR_FEATURES)),
        item_titles=titles,
    )


def _rows_of(wanted: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Row of each wanted id in ``available``, -1 where it is absent."""
    if not len(available):
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(available, kind="stable")
    positions = np.minimum(np.searchsorted(available[order], wanted), len(available) - 1)
    found = available[order][positions] == wanted
    return np.where(found, order[positions], -1).astype(np.int64)


def _year_features(years: np.ndarray) -> np.ndarray:
    """``float32 [n, 2]``: the scaled year and the scaled log age (see the module docstring).

    Unknown years get the mean of the known values in each column.
    """
    known = ~np.isnan(years)
    features = np.full((len(years), len(YEAR_FEATURES)), 0.5, dtype=np.float32)
    if not known.any():
        return features
    low, high = years[known].min(), years[known].max()
    if high > low:
        features[known, 0] = (years[known] - low) / (high - low)
        features[known, 1] = np.log1p(high - years[known]) / np.log1p(high - low)
        features[~known] = features[known].mean(axis=0)
    return features
