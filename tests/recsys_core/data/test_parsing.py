"""The delimited-file reader: conversions, chunking, and errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_test_helpers import raises_at

from recsys_core.data.parsing import Field, iter_text_chunks, read_header, read_table
from recsys_core.errors import DatasetNotFoundError

RATINGS = (
    Field("user", "int", "user id"),
    Field("item", "int", "item id"),
    Field("rating", "float", "rating"),
    Field("timestamp", "int", "timestamp"),
)
HEADER = ("userId", "movieId", "rating", "timestamp")


def write(tmp_path: Path, text: str | bytes, name: str = "data.txt") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def test_reads_tab_separated_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "1\t10\t4\t100\n2\t20\t3.5\t200\n")
    table = read_table(path, RATINGS, delimiter="\t")
    assert table["user"].tolist() == [1, 2]
    assert table["item"].dtype == np.int64
    assert table["rating"].tolist() == [4.0, 3.5]
    assert table["timestamp"].tolist() == [100, 200]


def test_double_colon_and_pipe_delimiters(tmp_path: Path) -> None:
    dat = write(tmp_path, "1::10::5::100\n2::20::1::200\n", "ratings.dat")
    assert read_table(dat, RATINGS, delimiter="::")["item"].tolist() == [10, 20]
    fields = (Field("item", "int"), Field("title", "str"), Field("skip", "skip"))
    pipe = write(tmp_path, "1|Toy Story (1995)|x\n2|Heat (1995)|y\n", "u.item")
    table = read_table(pipe, fields, delimiter="|")
    assert table["title"].tolist() == ["Toy Story (1995)", "Heat (1995)"]
    assert "skip" not in table.columns


def test_header_is_checked_and_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "userId,movieId,rating,timestamp\n1,2,3.0,4\n")
    table = read_table(path, RATINGS, delimiter=",", header=HEADER)
    assert table["user"].tolist() == [1]
    wrong = write(tmp_path, "user,movie,rating,time\n1,2,3.0,4\n", "wrong.csv")
    with raises_at(wrong, 1, "expected the header 'userId,movieId,rating,timestamp'"):
        read_table(wrong, RATINGS, delimiter=",", header=HEADER)


def test_csv_quoting_with_commas_and_line_breaks(tmp_path: Path) -> None:
    fields = (Field("item", "int"), Field("title", "str"), Field("genres", "str"))
    text = (
        "movieId,title,genres\n"
        '11,"American President, The (1995)",Comedy|Drama\n'
        '12,"Two\nLines (2000)",Drama\n'
        "13,Plain (2001),Comedy\n"
        "x,Bad (2002),Comedy\n"
    )
    path = write(tmp_path, text, "movies.csv")
    with raises_at(path, 6, "item 'x' is not an integer"):
        read_table(path, fields, delimiter=",", header=("movieId", "title", "genres"))
    path = write(tmp_path, text.replace("x,Bad", "14,Good"), "movies.csv")
    table = read_table(path, fields, delimiter=",", header=("movieId", "title", "genres"))
    assert table["title"].tolist()[:2] == ["American President, The (1995)", "Two\nLines (2000)"]
    assert table["item"].tolist() == [11, 12, 13, 14]


def test_blank_lines_crlf_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff1\t2\t3\t4\r\n\r\n5\t6\t7\t8\r\n\n")
    table = read_table(path, RATINGS, delimiter="\t", with_line_numbers=True)
    assert table["user"].tolist() == [1, 5]
    assert table["timestamp"].tolist() == [4, 8]
    assert table.line_numbers.tolist() == [1, 3]


def test_small_chunks_give_the_same_table_and_line_numbers(tmp_path: Path) -> None:
    rows = [f"{u},{u % 7},{(u % 5) + 0.5},{1000 + u}" for u in range(500)]
    path = write(tmp_path, "\n".join(["userId,movieId,rating,timestamp", *rows]) + "\n", "r.csv")
    whole = read_table(path, RATINGS, delimiter=",", header=HEADER)
    chunked = read_table(path, RATINGS, delimiter=",", header=HEADER, chunk_bytes=64)
    for name in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(whole[name], chunked[name])
    rows[400] = "400,1,abc,1400"
    bad = write(tmp_path, "\n".join(["userId,movieId,rating,timestamp", *rows]) + "\n", "b.csv")
    with raises_at(bad, 402, "rating 'abc' is not a number"):
        read_table(bad, RATINGS, delimiter=",", header=HEADER, chunk_bytes=64)


def test_quoted_field_spanning_a_chunk_boundary(tmp_path: Path) -> None:
    fields = (Field("item", "int"), Field("title", "str"))
    long_title = "A\n" + "x" * 200 + "\nB"
    path = write(tmp_path, f'1,"{long_title}"\n2,Short\n', "m.csv")
    table = read_table(path, fields, delimiter=",", chunk_bytes=16)
    assert table["title"].tolist() == [long_title, "Short"]


def test_malformed_line_names_expected_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "1\t2\t3\t4\n5\t6\t7\n")
    with raises_at(
        path, 2, "expected 4 tab-separated fields (user, item, rating, timestamp), found 3"
    ):
        read_table(path, RATINGS, delimiter="\t")


def test_wrong_delimiter_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "1,2,3,4\n")
    with raises_at(path, 1, "found 1 — is the delimiter right?"):
        read_table(path, RATINGS, delimiter="\t")


def test_empty_file_and_header_without_rows(tmp_path: Path) -> None:
    empty = write(tmp_path, "", "empty.csv")
    with raises_at(empty, 1, "file is empty"):
        read_table(empty, RATINGS, delimiter=",")
    only_header = write(tmp_path, "userId,movieId,rating,timestamp\n\n", "header.csv")
    with raises_at(only_header, 2, "file has a header but no rows"):
        read_table(only_header, RATINGS, delimiter=",", header=HEADER)


def test_non_numeric_id(tmp_path: Path) -> None:
    path = write(tmp_path, "1\t2\t3\t4\nabc\t2\t3\t4\n")
    with raises_at(path, 2, "user id 'abc' is not an integer"):
        read_table(path, RATINGS, delimiter="\t")


def test_non_finite_rating(tmp_path: Path) -> None:
    path = write(tmp_path, "1\t2\tnan\t4\n")
    with raises_at(path, 1, "rating 'nan' is not a finite number"):
        read_table(path, RATINGS, delimiter="\t")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.dat"
    with pytest.raises(DatasetNotFoundError) as info:
        read_table(path, RATINGS, delimiter="\t")
    assert f"{path}: file not found" in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"1::T1::Drama\n2::T2::Drama\n3::Caf\xe9::Drama\n")
    fields = (Field("item", "int"), Field("title", "str"), Field("genres", "str"))
    with raises_at(path, 3, "not valid utf-8", "encoding"):
        read_table(path, fields, delimiter="::")
    table = read_table(path, fields, delimiter="::", encoding="latin-1")
    assert table["title"].tolist()[2] == "Café"


def test_id_kind_keeps_strings_and_padded_numbers(tmp_path: Path) -> None:
    fields = (Field("user", "id", "user id"), Field("item", "id", "item id"))
    numbers = read_table(write(tmp_path, "1 10\n2 20\n", "a"), fields, delimiter=None)
    assert numbers["user"].dtype == np.int64
    padded = read_table(write(tmp_path, "007 10\n7 20\n", "b"), fields, delimiter=None)
    assert padded["user"].tolist() == ["007", "7"]
    assert padded["item"].tolist() == [10, 20]
    lines = "".join(f"{i} {i}\n" for i in range(50)) + "u50 x\n"
    mixed = read_table(write(tmp_path, lines, "c"), fields, delimiter=None, chunk_bytes=32)
    assert mixed["user"].tolist() == [str(i) for i in range(50)] + ["u50"]


def test_timestamp_kind_floors_decimals(tmp_path: Path) -> None:
    fields = (Field("t", "timestamp", "timestamp"),)
    table = read_table(write(tmp_path, "12\n13.7\n"), fields, delimiter=",")
    assert table["t"].tolist() == [12, 13]
    with raises_at(tmp_path / "data.txt", 1, "timestamp 'soon' is not a number"):
        read_table(write(tmp_path, "soon\n"), fields, delimiter=",")
    # Beyond 64 bits the cast to int64 would wrap to a large negative time, silently.
    with raises_at(tmp_path / "data.txt", 2, "timestamp '99999999999999999999999999' is outside the range"):
        read_table(write(tmp_path, "12\n99999999999999999999999999\n"), fields, delimiter=",")


def test_read_header_and_chunks(tmp_path: Path) -> None:
    path = write(tmp_path, "\n user_id ,item_id\n1,2\n")
    assert read_header(path, ",") == ["user_id", "item_id"]
    chunks = list(iter_text_chunks(path))
    assert [chunk.line_numbers.tolist() for chunk in chunks] == [[2, 3]]
