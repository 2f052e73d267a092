"""Dataset loaders on the real shared files and on small files written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_test_helpers import raises_at

from recsys_core.data import ColumnMapping, InteractionLog, load_interactions_file
from recsys_core.data.amazon import load_amazon_sequences
from recsys_core.data.movielens import (
    load_movielens_1m,
    load_movielens_10m,
    load_movielens_100k,
    load_movielens_csv,
)
from recsys_core.errors import ConfigError, DataFormatError, DatasetNotFoundError


def dataset(datasets_dir: Path, folder: str) -> Path:
    path = datasets_dir / folder
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def features_of(log: InteractionLog, original_item: object) -> dict[str, float]:
    assert log.item_features is not None
    row = log.item_features.values[log.item_map.to_internal([original_item])[0]]
    return dict(zip(log.item_features.names, row.tolist(), strict=True))


def assert_sorted_by_user_then_time(log: InteractionLog) -> None:
    order = np.lexsort((log.timestamps, log.user_ids))
    np.testing.assert_array_equal(order, np.arange(log.n_interactions))


# --- real datasets -------------------------------------------------------------------------


def test_movielens_100k(datasets_dir: Path) -> None:
    log = load_movielens_100k(dataset(datasets_dir, "movielens-100k"))
    assert (log.n_interactions, log.n_users, log.n_items) == (100_000, 943, 1_682)
    assert log.name == "ml-100k"
    assert log.item_features is not None
    assert log.item_features.values.shape == (1_682, 21)
    assert log.item_features.names[0] == "unknown" and log.item_features.names[-2:] == ("year", "log_age")
    assert sorted(np.unique(log.ratings).tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert np.bincount(log.ratings.astype(int))[1:].tolist() == [6110, 11370, 27145, 34174, 21201]
    toy_story = features_of(log, 1)
    assert toy_story["Animation"] == toy_story["Children's"] == toy_story["Comedy"] == 1.0
    assert toy_story["Action"] == 0.0
    years, log_ages = log.item_features.values[:, -2], log.item_features.values[:, -1]
    assert years.min() == log_ages.min() == 0.0 and years.max() == log_ages.max() == 1.0
    # 1922-1998: a 1997 film sits 1/76 below 1998 in year but log(2)/log(77) = 0.16 above it in log age.
    star_wars = features_of(log, 50)  # Star Wars (1977)
    assert star_wars["year"] == pytest.approx(55 / 76)
    assert star_wars["log_age"] == pytest.approx(np.log(22) / np.log(77))
    # Item 267 has no release date: it gets the mean of the other movies' values.
    others = np.delete(log.item_features.values, log.item_map.to_internal([267]), axis=0)
    assert features_of(log, 267)["year"] == pytest.approx(others[:, -2].mean(), abs=1e-5)
    assert features_of(log, 267)["log_age"] == pytest.approx(others[:, -1].mean(), abs=1e-5)
    assert log.item_titles[log.item_map.to_internal([1])[0]] == "Toy Story (1995)"
    assert log.item_titles[log.item_map.to_internal([543])[0]] == "Misérables, Les (1995)"
    assert_sorted_by_user_then_time(log)


def test_movielens_latest_small(datasets_dir: Path) -> None:
    log = load_movielens_csv(dataset(datasets_dir, "movielens-latest-small"), "ml-latest-small")
    assert (log.n_interactions, log.n_users, log.n_items) == (100_836, 610, 9_724)
    assert set(np.unique(log.ratings).tolist()) == {x / 2 for x in range(1, 11)}
    names = log.item_features.names
    assert "(no genres listed)" not in names and "IMAX" in names and names[-2:] == ("year", "log_age")
    assert log.item_titles[log.item_map.to_internal([11])[0]] == "American President, The (1995)"
    assert features_of(log, 11)["Romance"] == 1.0
    assert log.timestamps.min() == 828124615  # 1996-03-29 UTC
    assert_sorted_by_user_then_time(log)


def test_amazon_beauty(datasets_dir: Path) -> None:
    path = dataset(datasets_dir, "amazon-beauty-5core-seq") / "Beauty.txt"
    log = load_amazon_sequences(path, name="amazon-beauty")
    assert (log.n_users, log.n_items, log.n_interactions) == (22_363, 12_101, 198_502)
    assert log.ratings is None and log.item_features is None
    first = log.user_map.to_internal([1])[0]
    assert log.item_map.to_original(log.items_of(first)).tolist() == [1, 2, 3, 4, 5]
    lengths = np.diff(log.user_offsets)
    assert lengths.min() >= 5
    start, end = log.user_offsets[first], log.user_offsets[first + 1]
    assert log.timestamps[start:end].tolist() == [0, 1, 2, 3, 4]


def test_amazon_sports_through_the_registry(datasets_dir: Path) -> None:
    from recsys_core.data.registry import load_dataset

    log = load_dataset("amazon-sports", data_dir=datasets_dir)
    assert (log.n_users, log.n_items, log.n_interactions) == (35_598, 18_357, 296_337)
    assert np.diff(log.user_offsets).min() >= 5 and log.name == "amazon-sports"


# --- MovieLens formats on small files ------------------------------------------------------


def write_ml1m(folder: Path, encoding: str, ratings: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(
        ratings or "1::10::5::978300760\n1::20::3::978300700\n2::30::4::978300000\n",
        encoding=encoding,
    )
    (folder / "movies.dat").write_text(
        "10::Café Society (1990)::Comedy|Drama\n"
        "20::Heat (1995)::Action|Crime|Thriller\n"
        "40::Unrated (2000)::Western\n",
        encoding=encoding,
    )
    return folder


def test_movielens_1m_latin1(tmp_path: Path) -> None:
    log = load_movielens_1m(write_ml1m(tmp_path / "ml-1m", "latin-1"))
    assert (log.n_interactions, log.n_users, log.n_items) == (3, 2, 3)
    assert log.item_map.original_ids.tolist() == [10, 20, 30]
    # The genre vocabulary is the movie file's, including genres of unrated movies (Western).
    genres = ("Action", "Comedy", "Crime", "Drama", "Thriller", "Western")
    assert log.item_features.names == (*genres, "year", "log_age")
    assert features_of(log, 10) == pytest.approx(
        {"Action": 0, "Comedy": 1, "Crime": 0, "Drama": 1, "Thriller": 0, "Western": 0, "year": 0, "log_age": 1}
    )
    assert features_of(log, 20)["year"] == 1.0 and features_of(log, 20)["log_age"] == 0.0
    # Movie 30 is rated but not in movies.dat: no genres, the mean year and log age, no title.
    assert features_of(log, 30) == pytest.approx({**dict.fromkeys(genres, 0.0), "year": 0.5, "log_age": 0.5})
    assert log.item_titles.tolist() == ["Café Society (1990)", "Heat (1995)", ""]
    # User 1's rows are in time order: item 20 (earlier) before item 10.
    assert log.item_map.to_original(log.items_of(0)).tolist() == [20, 10]
    assert log.ratings.tolist() == [3.0, 5.0, 4.0]


def test_movielens_10m_is_utf8(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-10m", "utf-8", "1::10::4.5::1\n")
    log = load_movielens_10m(folder)
    assert log.ratings.tolist() == [4.5]
    assert log.item_titles.tolist() == ["Café Society (1990)"]
    latin1 = write_ml1m(tmp_path / "latin1", "latin-1", "1::10::4.5::1\n")
    with raises_at(latin1 / "movies.dat", 1, "not valid utf-8"):
        load_movielens_10m(latin1)


def test_movielens_25m_style_csv(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,0.5,50\n2,3,5.0,10\n"
    )
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"Shawshank Redemption, The (1994)",Crime|Drama\n'
        "2,Untitled Movie,(no genres listed)\n"
        '3,"Show, The (2006–2007)",Comedy|IMAX\n'
    )
    log = load_movielens_csv(tmp_path, "ml-25m")
    assert log.name == "ml-25m"
    assert log.item_features.names == ("Comedy", "Crime", "Drama", "IMAX", "year", "log_age")
    assert log.item_titles[0] == "Shawshank Redemption, The (1994)"
    assert features_of(log, 2) == pytest.approx(
        {"Comedy": 0, "Crime": 0, "Drama": 0, "IMAX": 0, "year": 0.5, "log_age": 0.5}
    )
    assert features_of(log, 3)["year"] == 1.0 and features_of(log, 3)["IMAX"] == 1.0


def test_movielens_csv_wrong_header(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("user,item,rating,timestamp\n1,1,4.0,100\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A (1990),Drama\n")
    with raises_at(tmp_path / "ratings.csv", 1, "expected the header"):
        load_movielens_csv(tmp_path, "ml-20m")


def test_duplicate_movie_id(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, "latin-1")
    with open(folder / "movies.dat", "a", encoding="latin-1") as handle:
        handle.write("20::Heat again (1995)::Action\n")
    with raises_at(folder / "movies.dat", 4, "movie id 20 appears more than once (lines 2 and 4)"):
        load_movielens_1m(folder)


# --- bad input: each error names the file and the line ---------------------------------------


def test_malformed_line(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, "latin-1", "1::10::5::978300760\n1::20::3\n")
    with raises_at(folder / "ratings.dat", 2, "expected 4 '::'-separated fields", "found 3"):
        load_movielens_1m(folder)


def test_wrong_delimiter(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, "latin-1", "1\t10\t5\t978300760\n")
    with raises_at(
        folder / "ratings.dat",
        1,
        "expected 4 '::'-separated fields (user, item, rating, timestamp), found 1 — "
        "is the delimiter right?",
    ):
        load_movielens_1m(folder)


def test_empty_file(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, "latin-1")
    (folder / "ratings.dat").write_text("")
    with raises_at(folder / "ratings.dat", 1, "file is empty"):
        load_movielens_1m(folder)


def test_non_numeric_id(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, "latin-1", "1::10::5::978300760\nabc::10::5::978300760\n")
    with raises_at(folder / "ratings.dat", 2, "user id 'abc' is not an integer"):
        load_movielens_1m(folder)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_movielens_100k(tmp_path)
    assert str(tmp_path / "u.data") in str(info.value)


# --- Amazon sequential format ---------------------------------------------------------------


def test_amazon_string_ids_and_positions(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("alice B0001 B0002 B0003\nbob B0002\n\n")
    log = load_amazon_sequences(path)
    assert log.user_map.original_ids.tolist() == ["alice", "bob"]
    assert log.item_map.to_original(log.items_of(0)).tolist() == ["B0001", "B0002", "B0003"]
    assert log.timestamps.tolist() == [0, 1, 2, 0]


def test_amazon_errors(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("1 2 3\n4,5,6\n")
    with raises_at(path, 2, "expected a user id followed by at least one item id"):
        load_amazon_sequences(path)
    path.write_text("1 2 3\n2 4\n1 5\n")
    with raises_at(path, 3, "user 1 appears on lines 1 and 3"):
        load_amazon_sequences(path)
    path.write_text("\n\n")
    with raises_at(path, 1, "file is empty"):
        load_amazon_sequences(path)


# --- generic files ---------------------------------------------------------------------------


def test_generic_csv_with_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("ts,customer,product,score\n30,u2,p1,1.5\n20,u1,p2,2\n10,u1,p1,3\n")
    mapping = ColumnMapping(user="customer", item="product", rating="score", timestamp="ts")
    log = load_interactions_file(path, mapping)
    assert log.name == "events"
    assert log.user_map.original_ids.tolist() == ["u1", "u2"]
    assert log.item_map.to_original(log.items_of(0)).tolist() == ["p1", "p2"]
    assert log.timestamps.tolist() == [10, 20, 30]
    assert log.ratings.tolist() == [3.0, 2.0, 1.5]


def test_generic_tsv_without_rating_or_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "events.tsv"
    path.write_text("user_id\titem_id\textra\n7\t3\tx\n5\t4\ty\n7\t1\tz\n")
    log = load_interactions_file(path)
    assert log.ratings is None
    assert log.user_map.original_ids.tolist() == [5, 7]
    # No timestamps: each user's rows keep file order.
    assert log.item_map.to_original(log.items_of(1)).tolist() == [3, 1]


def test_generic_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,stars\n1,2,3\n")
    with raises_at(path, 1, "the rating column 'rating' is not in the file", "'stars'"):
        load_interactions_file(path, ColumnMapping(rating="rating"))


def test_generic_non_numeric_rating(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,rating\n1,2,3\n1,3,good\n")
    with raises_at(path, 3, "rating 'good' is not a number"):
        load_interactions_file(path, ColumnMapping(rating="rating"))


def test_generic_format_from_extension_or_argument(tmp_path: Path) -> None:
    path = tmp_path / "events.txt"
    path.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(ConfigError, match=r"set data\.file_format = \"csv\", \"tsv\" or \"parquet\""):
        load_interactions_file(path)
    assert load_interactions_file(path, file_format="csv").n_interactions == 1


def test_generic_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "events.parquet"
    table = pa.table(
        {
            "user": ["b", "a", "a"],
            "item": [3, 1, 2],
            "weight": [1.0, 2.0, 0.5],
            "when": pa.array([3_000, 1_000, 2_000], type=pa.timestamp("ms")),
            "tag": ["x", "y", "z"],
        }
    )
    pq.write_table(table, path)
    mapping = ColumnMapping(user="user", item="item", rating="weight", timestamp="when")
    log = load_interactions_file(path, mapping)
    assert log.user_map.original_ids.tolist() == ["a", "b"]
    assert log.item_map.original_ids.tolist() == [1, 2, 3]
    assert log.timestamps.tolist() == [1, 2, 3]
    assert log.ratings.tolist() == [2.0, 0.5, 1.0]
    with pytest.raises(DataFormatError, match="the item column 'product' is not in the file"):
        load_interactions_file(path, ColumnMapping(user="user", item="product"))
    with pytest.raises(DataFormatError, match="has type string; expected numbers"):
        load_interactions_file(path, ColumnMapping(user="user", item="item", rating="tag"))
