"""Loader for a user's own interactions file: CSV, TSV or Parquet with named columns.

CSV and TSV files need a header row. User and item ids may be integers or
strings and are kept as the original ids. Ratings (or any feedback weight) and
timestamps are optional and must be numeric when mapped. Without a timestamp
column every interaction gets timestamp 0, so each user's rows keep file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.parsing import Field, FieldKind, read_header, read_table
from recsys_core.errors import ConfigError, DataFormatError, DatasetNotFoundError, FedrecError

if TYPE_CHECKING:
    import pyarrow as pa

FileFormat = Literal["csv", "tsv", "parquet"]
_EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_DELIMITERS = {"csv": ",", "tsv": "\t"}


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of the file hold the user, item, rating and timestamp.

    ``rating`` and ``timestamp`` are optional (``None``: not in the file).
    """

    user: str = "user_id"
    item: str = "item_id"
    rating: str | None = None
    timestamp: str | None = None

    def mapped(self) -> dict[str, str]:
        """Role (``user``, ``item``, ...) to column name, for the columns that are mapped."""
        roles = {
            "user": self.user,
            "item": self.item,
            "rating": self.rating,
            "timestamp": self.timestamp,
        }
        return {role: column for role, column in roles.items() if column is not None}


_KINDS: dict[str, FieldKind] = {"user": "id", "item": "id", "rating": "float", "timestamp": "timestamp"}
_LABELS = {"user": "user id", "item": "item id", "rating": "rating", "timestamp": "timestamp"}


def load_interactions_file(
    path: str | Path,
    mapping: ColumnMapping | None = None,
    file_format: FileFormat | None = None,
    name: str | None = None,
    encoding: str = "utf-8",
) -> InteractionLog:
    """Loads interactions from a CSV, TSV or Parquet file.

    ``file_format`` defaults to the one the extension names (``.csv``, ``.tsv``/``.tab``,
    ``.parquet``/``.pq``). ``name`` defaults to the file's stem.
    """
    path = Path(path)
    mapping = mapping or ColumnMapping()
    file_format = file_format or _format_from_extension(path)
    if file_format == "parquet":
        columns = _read_parquet(path, mapping)
    elif file_format in _DELIMITERS:
        columns = _read_delimited(path, mapping, _DELIMITERS[file_format], encoding)
    else:
        raise ConfigError(f"unknown file format {file_format!r}; expected csv, tsv or parquet")
    timestamps = columns.get("timestamp")
    return InteractionLog.from_original_ids(
        columns["user"],
        columns["item"],
        timestamps=timestamps,
        ratings=columns.get("rating"),
        name=name or path.stem,
    )


def _format_from_extension(path: Path) -> FileFormat:
    file_format = _EXTENSIONS.get(path.suffix.lower())
    if file_format is None:
        raise ConfigError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            "pass file_format='csv', 'tsv' or 'parquet'"
        )
    return file_format


def _missing_column_error(
    path: Path, role: str, column: str, available: list[str], line: int | None
) -> DataFormatError:
    return DataFormatError(
        path,
        f"the {role} column {column!r} is not in the file; its columns are: "
        + ", ".join(repr(name) for name in available),
        line=line,
    )


def _read_delimited(
    path: Path, mapping: ColumnMapping, delimiter: str, encoding: str
) -> dict[str, np.ndarray]:
    header = read_header(path, delimiter, encoding)
    roles = {column: role for role, column in mapping.mapped().items()}
    for role, column in mapping.mapped().items():
        if column not in header:
            raise _missing_column_error(path, role, column, header, line=1)
        if header.count(column) > 1:
            raise DataFormatError(path, f"the header names column {column!r} twice", line=1)
    fields = [
        Field(roles[column], _KINDS[roles[column]], _LABELS[roles[column]])
        if column in roles
        else Field(f"column {index}", "skip")
        for index, column in enumerate(header)
    ]
    table = read_table(path, fields, delimiter=delimiter, encoding=encoding, header=header)
    return table.columns


def _read_parquet(path: Path, mapping: ColumnMapping) -> dict[str, np.ndarray]:
    try:
        # Imported here: pyarrow is an optional dependency.
        import pyarrow.parquet as pq
    except ImportError:
        raise FedrecError(
            "reading Parquet files needs pyarrow: install fedrec[parquet] "
            "(pip install 'fedrec[parquet]')"
        ) from None
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: file not found")
    try:
        available = pq.read_schema(path).names
    except (OSError, ValueError) as error:
        raise DataFormatError(path, f"not a readable Parquet file: {error}") from None
    for role, column in mapping.mapped().items():
        if column not in available:
            raise _missing_column_error(path, role, column, available, line=None)
    try:
        table = pq.read_table(path, columns=list(dict.fromkeys(mapping.mapped().values())))
    except (OSError, ValueError) as error:
        raise DataFormatError(path, f"not a readable Parquet file: {error}") from None
    if table.num_rows == 0:
        raise DataFormatError(path, "file has no rows")
    return {
        role: _arrow_column(path, table.column(column), role, column)
        for role, column in mapping.mapped().items()
    }


def _arrow_column(path: Path, column: pa.ChunkedArray, role: str, name: str) -> np.ndarray:
    """Converts one Arrow column, checking its type and that no value is missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py()) + 1
        raise DataFormatError(path, f"the {role} column {name!r} has a missing value in row {row}")
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if role in ("user", "item"):
        if pa.types.is_integer(kind):
            return column.to_numpy().astype(np.int64)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return np.asarray(column.to_pylist(), dtype=np.str_)
        expected = "integers or strings"
    elif role == "timestamp" and pa.types.is_timestamp(kind):
        ticks = column.cast(pa.int64()).to_numpy()
        return ticks // _TICKS_PER_SECOND[kind.unit]
    elif role == "timestamp" and pa.types.is_integer(kind):
        return column.to_numpy().astype(np.int64)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = column.cast(pa.float64()).to_numpy()
        _check_finite(path, values, role, name)
        return values if role == "rating" else np.floor(values).astype(np.int64)
    else:
        expected = "numbers" if role == "rating" else "numbers or timestamps"
    raise DataFormatError(path, f"the {role} column {name!r} has type {kind}; expected {expected}")


_TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _check_finite(path: Path, values: np.ndarray, role: str, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataFormatError(
            path,
            f"the {role} column {name!r} has the non-finite value {values[bad[0]]} "
            f"in row {int(bad[0]) + 1}",
        )
