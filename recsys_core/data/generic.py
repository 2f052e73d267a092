"""Loader for a user's own interactions file: CSV, TSV or Parquet with named columns.

CSV and TSV files need a header row. The format comes from the extension or
from ``file_format`` (config key ``data.file_format``), the text encoding of a
CSV/TSV file from ``encoding`` (``data.encoding``). User and item ids may be
integers or strings and are kept as the original ids. Ratings, an implicit
feedback weight (a play count: non-negative) and timestamps are optional and
must be numeric when mapped. Without a
timestamp column every interaction gets timestamp 0, so each user's rows keep
file order (and the default split holds out a random sample instead:
:func:`recsys_core.data.splits.resolve_split_method`).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.parsing import Field, FieldKind, describe_delimiter, read_header, read_table
from recsys_core.errors import ConfigError, DataFormatError, DatasetNotFoundError, FedrecError

if TYPE_CHECKING:
    import pyarrow as pa

FileFormat = Literal["csv", "tsv", "parquet"]
#: The ``data.file_format`` setting: a format, or ``auto`` for the one the extension names.
FileFormatSetting = Literal["auto", "csv", "tsv", "parquet"]
FILE_FORMAT_KEY = "data.file_format"
ENCODING_KEY = "data.encoding"
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
    """Which columns of the file hold the user, item, rating, weight and timestamp.

    ``rating``, ``weight`` and ``timestamp`` are optional (``None``: not in the file).
    ``weight`` is an implicit feedback strength, such as a play count or a quantity:
    ``data.preprocessing.weight_transform`` turns it into the interaction's weight.
    """

    user: str = "user_id"
    item: str = "item_id"
    rating: str | None = None
    timestamp: str | None = None
    weight: str | None = None

    def validate(self) -> ColumnMapping:
        """Refuses one column named for two roles: the loader reads each column as one thing."""
        seen: dict[str, str] = {}
        for role, column in self.mapped().items():
            if column in seen:
                raise ConfigError(f"data.columns.{seen[column]} and data.columns.{role} both name column {column!r}; "
                                  "map each role to a column of its own")
            seen[column] = role
        return self

    def mapped(self) -> dict[str, str]:
        """Role (``user``, ``item``, ...) to column name, for the columns that are mapped."""
        roles = {
            "user": self.user,
            "item": self.item,
            "rating": self.rating,
            "timestamp": self.timestamp,
            "weight": self.weight,
        }
        return {role: column for role, column in roles.items() if column is not None}


_KINDS: dict[str, FieldKind] = {"user": "id", "item": "id", "rating": "float", "timestamp": "timestamp",
                                 "weight": "float"}
_LABELS = {"user": "user id", "item": "item id", "rating": "rating", "timestamp": "timestamp", "weight": "weight"}


def load_interactions_file(
    path: str | Path,
    mapping: ColumnMapping | None = None,
    file_format: FileFormatSetting | None = None,
    name: str | None = None,
    encoding: str = "utf-8",
) -> InteractionLog:
    """Loads interactions from a CSV, TSV or Parquet file.

    ``file_format`` ``None`` or ``"auto"`` means the one the extension names (``.csv``,
    ``.tsv``/``.tab``, ``.parquet``/``.pq``); ``encoding`` is the text encoding of a
    CSV or TSV file. ``name`` defaults to the file's stem. Errors name the config
    keys ``data.file_format`` and ``data.encoding`` that set these.
    """
    path = Path(path)
    mapping = (mapping or ColumnMapping()).validate()
    resolved = _format_from_extension(path) if file_format in (None, "auto") else file_format
    if resolved == "parquet":
        if normalized_encoding(encoding) != "utf-8":
            raise ConfigError(
                f"{ENCODING_KEY}: {path} is Parquet, which stores its text as UTF-8; leave {ENCODING_KEY} unset"
            )
        columns, line_numbers = _read_parquet(path, mapping), None
    elif resolved in _DELIMITERS:
        columns, line_numbers = _read_delimited(path, mapping, _DELIMITERS[resolved], encoding)
    else:
        raise ConfigError(
            f"{FILE_FORMAT_KEY}: unknown file format {resolved!r}; set it to \"csv\", \"tsv\" or \"parquet\""
        )
    for role in ("rating", "weight"):
        if role in columns:
            _check_single_precision(path, columns[role], f"the {role} column {getattr(mapping, role)!r}", line_numbers)
    weights = columns.get("weight")
    if weights is not None:
        _check_non_negative(path, weights, f"the weight column {mapping.weight!r}", line_numbers)
    return InteractionLog.from_original_ids(
        columns["user"],
        columns["item"],
        timestamps=columns.get("timestamp"),
        ratings=columns.get("rating"),
        name=name or path.stem,
        weights=weights,
    )


def _where(line_numbers: np.ndarray | None, index: int) -> tuple[str, int | None]:
    """How an error names row ``index``: by its line (delimited files) or its row (Parquet)."""
    return ("", int(line_numbers[index])) if line_numbers is not None else (f" in row {index + 1}", None)


def _check_single_precision(path: Path, values: np.ndarray, what: str, line_numbers: np.ndarray | None) -> None:
    """Ratings and weights are kept as float32: a finite value beyond its range would become infinite."""
    too_large = np.flatnonzero(np.abs(values) > np.finfo(np.float32).max)
    if len(too_large):
        suffix, line = _where(line_numbers, int(too_large[0]))
        raise DataFormatError(path, f"{what} has the value {values[too_large[0]]:g}{suffix}, beyond what a rating or "
                                    f"weight can hold (about {np.finfo(np.float32).max:.1e})", line=line)


def _check_non_negative(path: Path, values: np.ndarray, what: str, line_numbers: np.ndarray | None) -> None:
    """A weight is a count or an amount: a negative one is a data error, named with its line (or row)."""
    negative = np.flatnonzero(values < 0)
    if len(negative) == 0:
        return
    suffix, line = _where(line_numbers, int(negative[0]))
    raise DataFormatError(path, f"{what} has the negative value {values[negative[0]]:g}{suffix}; "
                                "a weight counts plays or amounts, so it must be >= 0", line=line)


def _format_from_extension(path: Path) -> FileFormat:
    file_format = _EXTENSIONS.get(path.suffix.lower())
    if file_format is None:
        raise ConfigError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"set {FILE_FORMAT_KEY} = \"csv\", \"tsv\" or \"parquet\""
        )
    return file_format


def normalized_encoding(encoding: str) -> str:
    """The codec's canonical name (``UTF8`` and ``utf_8`` are ``utf-8``); an unknown name is returned as given."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return encoding


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
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The mapped columns, and each row's line when a rating or weight needs checking after the parse."""
    header = read_header(path, delimiter, encoding, encoding_key=ENCODING_KEY)
    roles = {column: role for role, column in mapping.mapped().items()}
    for role, column in mapping.mapped().items():
        if column not in header:
            error = _missing_column_error(path, role, column, header, line=1)
            if len(header) == 1 and len(set(mapping.mapped().values())) > 1:
                error = DataFormatError(
                    path,
                    f"{error.reason} — is the delimiter right? This reads the file as "
                    f"{describe_delimiter(delimiter)}; set {FILE_FORMAT_KEY} (\"csv\" or \"tsv\")",
                    line=1,
                )
            raise error
        if header.count(column) > 1:
            raise DataFormatError(path, f"the header names column {column!r} twice", line=1)
    fields = [
        Field(roles[column], _KINDS[roles[column]], _LABELS[roles[column]])
        if column in roles
        else Field(f"column {index}", "skip")
        for index, column in enumerate(header)
    ]
    table = read_table(
        path, fields, delimiter=delimiter, encoding=encoding, header=header, encoding_key=ENCODING_KEY,
        with_line_numbers=mapping.weight is not None or mapping.rating is not None,
    )
    return table.columns, table.line_numbers


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
        return values if role in ("rating", "weight") else np.floor(values).astype(np.int64)
    else:
        expected = "numbers or timestamps" if role == "timestamp" else "numbers"
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
