"""A user's own file: ``data.file_format`` and ``data.encoding`` are settable keys, and errors name them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_test_helpers import raises_at

from recsys_core.data import ColumnMapping, load_interactions_file
from recsys_core.data.config import DataConfig
from recsys_core.data.loading import load_interactions
from recsys_core.data.parsing import Field, read_table
from recsys_core.errors import ConfigError
from recsys_core.experiment import ExperimentConfig
from recsys_core.federated.config import FederatedConfig


def file_config(path: Path, **data: Any) -> DataConfig:
    """The ``[data]`` section as ``fedrec train`` reads it (dict -> typed -> validated)."""
    values = {"dataset": "file", "path": str(path), "columns": {"user": "user", "item": "item"}, **data}
    return ExperimentConfig.from_dict({"data": values}).data


LATIN_1_ROWS = "user\titem\n1\tCafé\n1\tBjörk\n2\tSigur Rós\n2\tCafé\n"


def test_a_tab_separated_dat_file_loads_with_file_format_tsv(tmp_path: Path) -> None:
    path = tmp_path / "plays.dat"
    path.write_text("user\titem\n1\t10\n1\t11\n2\t10\n", encoding="utf-8")
    log = load_interactions(file_config(path, file_format="tsv"))
    assert (log.n_users, log.n_items, log.n_interactions) == (2, 2, 3)
    assert log.name == "plays"


def test_an_unknown_extension_names_the_key_to_set(tmp_path: Path) -> None:
    path = tmp_path / "plays.dat"
    path.write_text("user\titem\n1\t10\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'\.dat'; set data\.file_format = \"csv\", \"tsv\" or \"parquet\""):
        load_interactions(file_config(path))


def test_file_format_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "plays.csv"  # misnamed: the file is tab-separated
    path.write_text("user\titem\n1\t10\n2\t11\n", encoding="utf-8")
    assert load_interactions(file_config(path, file_format="tsv")).n_interactions == 2


def test_a_one_column_header_suggests_the_format_key(tmp_path: Path) -> None:
    path = tmp_path / "plays.csv"
    path.write_text("user\titem\n1\t10\n", encoding="utf-8")
    with raises_at(path, 1, "is the delimiter right?", "comma-separated", "set data.file_format"):
        load_interactions(file_config(path))


def test_a_latin_1_file_loads_with_its_encoding_and_keeps_non_ascii_ids(tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    path.write_bytes(LATIN_1_ROWS.encode("latin-1"))
    log = load_interactions(file_config(path, encoding="latin-1"))
    assert sorted(log.item_map.original_ids.tolist()) == ["Björk", "Café", "Sigur Rós"]
    user_2 = log.user_map.to_internal([2])[0]
    assert sorted(log.item_map.to_original(log.items_of(user_2)).tolist()) == ["Café", "Sigur Rós"]


def test_a_latin_1_file_read_as_utf_8_names_the_byte_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    raw = LATIN_1_ROWS.encode("latin-1")
    path.write_bytes(raw)
    offset = raw.index("é".encode("latin-1"))
    with raises_at(path, 2, f"not valid utf-8 at byte {offset} (bytes e9); set data.encoding (e.g. \"latin-1\")"):
        load_interactions(file_config(path))


def test_the_byte_offset_counts_earlier_blocks(tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    raw = ("user\titem\n" + "1\t10\n" * 50).encode() + "2\tCafé\n".encode("latin-1")
    path.write_bytes(raw)
    offset = raw.index("é".encode("latin-1"))
    fields = [Field("user", "id"), Field("item", "id")]
    with raises_at(path, 52, f"at byte {offset} ", "set data.encoding"):
        read_table(path, fields, delimiter="\t", header=["user", "item"], chunk_bytes=16,
                   encoding_key="data.encoding")


def test_a_utf_8_file_with_non_ascii_ids_needs_no_setting(tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    path.write_text(LATIN_1_ROWS, encoding="utf-8")
    log = load_interactions(file_config(path))
    assert "Sigur Rós" in log.item_map.original_ids.tolist()


def test_the_library_loader_takes_the_same_settings(tmp_path: Path) -> None:
    path = tmp_path / "plays.dat"
    path.write_bytes(LATIN_1_ROWS.encode("latin-1"))
    log = load_interactions_file(path, ColumnMapping("user", "item"), file_format="tsv", encoding="latin-1")
    assert log.n_items == 3
    with pytest.raises(ConfigError, match="data.file_format"):
        load_interactions_file(path, ColumnMapping("user", "item"), file_format="auto")


@pytest.mark.parametrize("build", ["train", "simulate"])
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"file_format": "dat"}, r"data\.file_format: 'dat' is not one of 'auto', 'csv', 'tsv', 'parquet'"),
        ({"encoding": "latin-9x"}, r"data\.encoding: unknown text encoding 'latin-9x'"),
        ({"encoding": "base64"}, r"data\.encoding: unknown text encoding 'base64'"),
        ({"file_format": "parquet", "encoding": "latin-1"}, r"data\.encoding: a Parquet file stores its text"),
        ({"columns": {"user": "u", "playcount": "plays"}}, r"data\.columns\.playcount"),
    ],
)
def test_bad_file_settings_are_rejected_naming_the_key(build: str, data: dict[str, Any], message: str) -> None:
    values = {"dataset": "file", "path": "plays.dat", **data}
    with pytest.raises(ConfigError, match=message):
        if build == "train":
            ExperimentConfig.from_dict({"data": values})
        else:
            FederatedConfig.from_dict({"data": values}).validate()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"dataset": "ml-100k", "encoding": "latin-1"}, "encoding"),
        ({"dataset": "synthetic", "file_format": "csv"}, "file_format"),
    ],
)
def test_file_settings_do_not_apply_to_registered_datasets(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"data\.{key}: applies to data\.dataset = 'file' only"):
        ExperimentConfig.from_dict({"data": data})


def test_spellings_of_utf_8_are_the_default() -> None:
    # "UTF8" names the default codec, so it is no setting a registered dataset would ignore.
    assert ExperimentConfig.from_dict({"data": {"dataset": "synthetic", "encoding": "UTF8"}}).data.encoding == "UTF8"


def test_a_parquet_file_refuses_another_encoding(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "plays.parquet"
    pq.write_table(pa.table({"user": [1, 2], "item": ["Café", "Björk"]}), path)
    assert np.sort(load_interactions(file_config(path)).item_map.original_ids).tolist() == ["Björk", "Café"]
    with pytest.raises(ConfigError, match="data.encoding: .* is Parquet"):
        load_interactions(file_config(path, encoding="latin-1"))


def test_the_parser_rejects_names_that_are_no_text_encoding(tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    path.write_text("user\titem\n1\t2\n", encoding="utf-8")
    for encoding in ("latin-9x", "base64"):
        with pytest.raises(ConfigError, match=f"unknown text encoding '{encoding}'"):
            read_table(path, [Field("user", "id"), Field("item", "id")], delimiter="\t", encoding=encoding)


def test_the_keys_can_be_set_on_the_command_line(tmp_path: Path) -> None:
    from recsys_core.config import apply_overrides

    path = tmp_path / "plays.dat"
    path.write_bytes(LATIN_1_ROWS.encode("latin-1"))
    base = {"data": {"dataset": "file", "path": str(path), "columns": {"user": "user", "item": "item"}}}
    values = apply_overrides(base, ['data.file_format="tsv"', "data.encoding=latin-1"])
    data = ExperimentConfig.from_dict(values).data
    assert (data.file_format, data.encoding) == ("tsv", "latin-1")
    assert load_interactions(data).n_items == 3


def test_spaces_around_ids_do_not_make_new_ids(tmp_path: Path) -> None:
    path = tmp_path / "plays.csv"
    path.write_text("user,item\nana, Low\nana,Can \nbo,Low\nbo ,Can\n", encoding="utf-8")
    log = load_interactions(file_config(path))
    assert sorted(log.user_map.original_ids) == ["ana", "bo"] and sorted(log.item_map.original_ids) == ["Can", "Low"]
