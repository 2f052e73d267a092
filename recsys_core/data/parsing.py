"""Line-oriented reading of delimited text files for every dataset loader.

Files are read in blocks of whole lines and each block is split and converted
column by column with NumPy, so a 25-million-line ratings file never becomes
25 million Python lists. Every problem raises
:class:`~recsys_core.errors.DataFormatError` with the 1-based line number and a
message that says what was expected.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from recsys_core.errors import ConfigError, DataFormatError, DatasetNotFoundError

FieldKind = Literal["int", "float", "timestamp", "id", "str", "skip"]
"""How a field is converted.

``int``: int64, strict. ``float``: finite float64. ``timestamp``: int64, accepting
decimal numbers (floored). ``id``: int64 when every value is a canonical integer
(no sign, padding or leading zeros), otherwise the original strings.
``str``: kept as text. ``skip``: not returned.
"""

DEFAULT_CHUNK_BYTES = 32 << 20
_BLOCK = 4096  # values converted at a time when searching for the first bad one

_DELIMITER_NAMES = {
    "\t": "tab-separated",
    ",": "comma-separated",
    "|": "'|'-separated",
    "::": "'::'-separated",
    None: "whitespace-separated",
}


@dataclass(frozen=True)
class Field:
    """One field of a delimited line: its name, how to convert it, and how to name it in errors."""

    name: str
    kind: FieldKind = "str"
    label: str | None = None

    @property
    def description(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class TextChunk:
    """Consecutive non-empty lines of a file (terminators removed) and their 1-based numbers."""

    lines: list[str]
    line_numbers: np.ndarray  # int64, one per line


@dataclass(frozen=True)
class Table:
    """Converted columns of a delimited file, keyed by field name."""

    columns: dict[str, np.ndarray]
    line_numbers: np.ndarray | None = None  # 1-based line of every row, when asked for

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def describe_delimiter(delimiter: str | None) -> str:
    """Words for a delimiter in error messages, e.g. ``"tab-separated"``."""
    return _DELIMITER_NAMES.get(delimiter, f"{delimiter!r}-separated")


def open_binary(path: Path) -> BinaryIO:
    """Opens ``path`` for reading; a missing file raises :class:`DatasetNotFoundError`."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetNotFoundError(f"{path}: is a directory, expected a file") from None


def iter_text_chunks(
    path: str | Path,
    encoding: str = "utf-8",
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    balance_quotes: bool = False,
    encoding_key: str | None = None,
) -> Generator[TextChunk, None, None]:
    """Yields the file's non-empty lines in blocks of about ``chunk_bytes``.

    Blocks end at a line break. With ``balance_quotes`` a block never ends inside
    a double-quoted CSV field, so quoted fields may span lines. Bytes that are not
    valid in ``encoding`` raise a :class:`DataFormatError` naming the line and the
    byte offset; with ``encoding_key`` (a config key, e.g. ``data.encoding``) the
    message says to set that key.
    """
    path = Path(path)
    _check_encoding(encoding)
    lines_before = 0
    bytes_before = 0
    with open_binary(path) as handle:
        for raw in _raw_blocks(handle, chunk_bytes, balance_quotes):
            text = _decode(path, raw, encoding, lines_before, bytes_before, encoding_key)
            if lines_before == 0 and text.startswith("\ufeff"):
                text = text[1:]  # a UTF-8 byte-order mark would otherwise stick to the first field
            chunk = _split_lines(text, lines_before)
            lines_before += text.count("\n")  # only the last block can lack a final break
            bytes_before += len(raw)
            if chunk.lines:
                yield chunk


def is_text_encoding(encoding: str) -> bool:
    """Whether ``encoding`` names a codec that decodes bytes to text (not ``base64`` or ``rot13``)."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError):
        return False
    return bool(getattr(info, "_is_text_encoding", True))


def _check_encoding(encoding: str) -> None:
    # Not b"".decode(encoding): CPython returns "" for empty input without looking the codec up.
    if not is_text_encoding(encoding):
        raise ConfigError(f"unknown text encoding {encoding!r}")


def _raw_blocks(handle: BinaryIO, chunk_bytes: int, balance_quotes: bool) -> Iterator[bytes]:
    buffer = b""
    while True:
        data = handle.read(chunk_bytes)
        if not data:
            if buffer:
                yield buffer
            return
        buffer += data
        cut = buffer.rfind(b"\n") + 1
        # An odd number of quotes means the cut falls inside a quoted field: read on.
        if cut == 0 or (balance_quotes and buffer.count(b'"', 0, cut) % 2):
            continue
        yield buffer[:cut]
        buffer = buffer[cut:]


def _decode(
    path: Path, raw: bytes, encoding: str, lines_before: int, bytes_before: int, encoding_key: str | None
) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = lines_before + raw.count(b"\n", 0, error.start) + 1
        bad = raw[error.start : error.end].hex(" ")
        where = f"not valid {encoding} at byte {bytes_before + error.start} (bytes {bad})"
        if encoding_key is not None:
            example = '"latin-1"' if encoding.lower().replace("_", "-") not in _LATIN_1 else '"utf-8"'
            message = f"{where}; set {encoding_key} (e.g. {example})"
        else:
            message = f"{where} — is the encoding right? (MovieLens 100K and 1M are Latin-1)"
        raise DataFormatError(path, message, line=line) from None


_LATIN_1 = {"latin-1", "latin1", "iso-8859-1", "iso8859-1", "l1", "cp819"}


def _split_lines(text: str, lines_before: int) -> TextChunk:
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    numbers = np.arange(lines_before + 1, lines_before + 1 + len(lines), dtype=np.int64)
    if "" in lines:
        keep = [index for index, line in enumerate(lines) if line]
        lines = [lines[index] for index in keep]
        numbers = numbers[np.asarray(keep, dtype=np.int64)]
    return TextChunk(lines, numbers)


def split_line(line: str, delimiter: str | None) -> list[str]:
    """Splits one line the way :func:`read_table` does (CSV quoting for commas)."""
    if delimiter is None:
        return line.split()
    if delimiter == "," and '"' in line:
        return next(csv.reader([line]), [])
    return line.split(delimiter)


def read_header(
    path: str | Path, delimiter: str | None, encoding: str = "utf-8", *, encoding_key: str | None = None
) -> list[str]:
    """The fields of the first non-empty line; an empty file raises :class:`DataFormatError`."""
    with closing(iter_text_chunks(path, encoding, chunk_bytes=1 << 16, encoding_key=encoding_key)) as chunks:
        first = next(chunks, None)
    if first is None:
        raise DataFormatError(path, "file is empty", line=1)
    return [name.strip() for name in split_line(first.lines[0], delimiter)]


def read_table(
    path: str | Path,
    fields: Sequence[Field],
    *,
    delimiter: str | None,
    encoding: str = "utf-8",
    header: Sequence[str] | None = None,
    with_line_numbers: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    encoding_key: str | None = None,
) -> Table:
    """Reads a delimited file whose every line has exactly ``len(fields)`` fields.

    ``delimiter`` is a string (``","`` uses CSV quoting rules) or ``None`` for
    runs of whitespace. With ``header`` the first non-empty line must hold exactly
    those names. Empty lines are skipped. Returns the converted columns of every
    field whose kind is not ``"skip"``. ``encoding_key`` is as for :func:`iter_text_chunks`.
    """
    path = Path(path)
    parts: dict[str, list[np.ndarray]] = {f.name: [] for f in fields if f.kind != "skip"}
    numbers_parts: list[np.ndarray] = []
    header_line: int | None = None
    balance = delimiter == ","
    chunks = iter_text_chunks(
        path, encoding, chunk_bytes=chunk_bytes, balance_quotes=balance, encoding_key=encoding_key
    )
    for chunk in chunks:
        lines, numbers = chunk.lines, chunk.line_numbers
        if header is not None and header_line is None:
            header_line = int(numbers[0])
            _check_header(path, lines[0], header_line, header, delimiter)
            lines, numbers = lines[1:], numbers[1:]
        converted, numbers = _convert_chunk(path, lines, numbers, fields, delimiter)
        if not len(numbers):
            continue
        for name, column in converted.items():
            parts[name].append(column)
        numbers_parts.append(numbers)
    if not numbers_parts:
        if header_line is None:
            raise DataFormatError(path, "file is empty", line=1)
        raise DataFormatError(path, "file has a header but no rows", line=header_line + 1)
    columns_out = {name: _concatenate(chunks) for name, chunks in parts.items()}
    line_numbers = np.concatenate(numbers_parts) if with_line_numbers else None
    return Table(columns_out, line_numbers)


def _convert_chunk(
    path: Path,
    lines: list[str],
    numbers: np.ndarray,
    fields: Sequence[Field],
    delimiter: str | None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Converted columns of one block of lines and the line number of every row."""
    fast = _load_numeric(lines, fields, delimiter)
    if fast is not None:
        return fast, numbers
    columns, numbers = _split_fields(path, lines, numbers, fields, delimiter)
    converted = {
        field.name: parse_column(values, field, path, numbers)
        for field, values in zip(fields, columns, strict=True)
        if field.kind != "skip"
    }
    return converted, numbers


def _load_numeric(
    lines: list[str], fields: Sequence[Field], delimiter: str | None
) -> dict[str, np.ndarray] | None:
    """NumPy's C parser for all-numeric lines (ratings files); ``None`` when it does not apply.

    Any failure returns ``None`` so that the slower path finds and reports the bad line.
    """
    numeric = all(field.kind in ("int", "float") for field in fields)
    if not lines or not numeric or delimiter is None or '"' in delimiter:
        return None
    if len(delimiter) > 1:
        # NumPy takes one-character delimiters only. replace() scans left to right like
        # str.split, so the fields are the same, unless a tab was already in the text.
        text = "\n".join(lines)
        if "\t" in text:
            return None
        lines = text.replace(delimiter, "\t").split("\n")
        delimiter = "\t"
    elif delimiter == "," and '"' in "\n".join(lines):
        return None
    dtype = np.dtype([(f.name, np.int64 if f.kind == "int" else np.float64) for f in fields])
    try:
        table = np.loadtxt(lines, dtype=dtype, delimiter=delimiter, comments=None, ndmin=1)
    except ValueError:
        return None
    columns = {field.name: table[field.name] for field in fields}  # strided views until joined
    floats = [columns[f.name] for f in fields if f.kind == "float"]
    if not all(bool(np.isfinite(column).all()) for column in floats):
        return None
    return columns


def _check_header(
    path: Path, line: str, number: int, expected: Sequence[str], delimiter: str | None
) -> None:
    found = [name.strip() for name in split_line(line, delimiter)]
    if found == list(expected):
        return
    hint = " — is the delimiter right?" if len(found) == 1 and len(expected) > 1 else ""
    shown = (delimiter or " ").join(expected)
    raise DataFormatError(path, f"expected the header {shown!r}, found {line!r}{hint}", line=number)


def field_count_message(fields: Sequence[Field], delimiter: str | None, found: int) -> str:
    """E.g. ``expected 4 tab-separated fields (user, item, rating, timestamp), found 1``."""
    names = ", ".join(field.name for field in fields)
    hint = " — is the delimiter right?" if found == 1 and len(fields) > 1 else ""
    return (
        f"expected {len(fields)} {describe_delimiter(delimiter)} fields ({names}), "
        f"found {found}{hint}"
    )


def _split_fields(
    path: Path,
    lines: list[str],
    numbers: np.ndarray,
    fields: Sequence[Field],
    delimiter: str | None,
) -> tuple[list[Sequence[str]], np.ndarray]:
    """Splits lines into one list of strings per field, checking the field count."""
    if not lines:
        return [[] for _ in fields], numbers
    if delimiter is None or (delimiter == "," and any('"' in line for line in lines)):
        return _split_rows(path, lines, numbers, fields, delimiter)
    width = len(fields)
    counts = np.fromiter(map(methodcaller("count", delimiter), lines), np.int64, len(lines))
    bad = np.flatnonzero(counts != width - 1)
    if len(bad):
        first = int(bad[0])
        message = field_count_message(fields, delimiter, int(counts[first]) + 1)
        raise DataFormatError(path, message, line=int(numbers[first]))
    # Lines never contain "\n", so joining with it and turning every delimiter into
    # "\n" yields exactly the concatenation of the per-line splits, in one C call.
    flat = "\n".join(lines).replace(delimiter, "\n").split("\n")
    return [flat[index::width] for index in range(width)], numbers


def _split_rows(
    path: Path,
    lines: list[str],
    numbers: np.ndarray,
    fields: Sequence[Field],
    delimiter: str | None,
) -> tuple[list[Sequence[str]], np.ndarray]:
    rows, starts = _rows_and_starts(path, lines, numbers, delimiter)
    width = len(fields)
    for row, start in zip(rows, starts, strict=True):
        if len(row) != width:
            raise DataFormatError(path, field_count_message(fields, delimiter, len(row)), start)
    row_numbers = np.asarray(starts, dtype=np.int64)
    if not rows:
        return [[] for _ in fields], row_numbers
    return [list(column) for column in zip(*rows, strict=True)], row_numbers


def _rows_and_starts(
    path: Path, lines: list[str], numbers: np.ndarray, delimiter: str | None
) -> tuple[list[list[str]], list[int]]:
    """Rows and the line each starts on; blank rows (whitespace only) are dropped."""
    if delimiter is None:
        pairs = [(line.split(), int(n)) for line, n in zip(lines, numbers, strict=True)]
        pairs = [(row, n) for row, n in pairs if row]
        return [row for row, _ in pairs], [n for _, n in pairs]
    # Terminators are put back so that a quoted field spanning lines keeps its line break.
    reader = csv.reader((line + "\n" for line in lines), delimiter=delimiter, strict=True)
    rows: list[list[str]] = []
    starts: list[int] = []
    consumed = 0
    try:
        for row in reader:
            if row:
                rows.append(row)
                starts.append(int(numbers[consumed]))
            consumed = reader.line_num
    except csv.Error as error:
        line = int(numbers[min(reader.line_num, len(numbers)) - 1])
        raise DataFormatError(path, f"malformed CSV: {error}", line=line) from None
    return rows, starts


def parse_column(
    values: Sequence[str], field: Field, path: str | Path, line_numbers: np.ndarray
) -> np.ndarray:
    """Converts one column of strings; ``line_numbers[i]`` is the line of ``values[i]``."""
    kind = field.kind
    if kind == "str":
        return np.asarray(values, dtype=np.str_)
    if kind == "int":
        return _convert(values, np.int64, field, path, line_numbers, "an integer")
    if kind == "float":
        floats = _convert(values, np.float64, field, path, line_numbers, "a number")
        return _check_finite(floats, values, field, path, line_numbers)
    if kind == "timestamp":
        return _parse_timestamps(values, field, path, line_numbers)
    if kind == "id":
        return _parse_ids(values, field, path, line_numbers)
    raise ValueError(f"unknown field kind {kind!r}")


def _convert(
    values: Sequence[str],
    dtype: type,
    field: Field,
    path: str | Path,
    line_numbers: np.ndarray,
    expected: str,
) -> np.ndarray:
    try:
        return np.array(values, dtype=dtype)
    except (ValueError, OverflowError, TypeError):
        index = _first_failure(values, dtype)
        raise DataFormatError(
            path,
            f"{field.description} {values[index]!r} is not {expected}",
            line=int(line_numbers[index]),
        ) from None


def _first_failure(values: Sequence[str], dtype: type) -> int:
    """Index of the first value NumPy cannot convert, searched block by block."""
    for start in range(0, len(values), _BLOCK):
        block = values[start : start + _BLOCK]
        try:
            np.array(block, dtype=dtype)
            continue
        except (ValueError, OverflowError, TypeError):
            pass
        for offset, value in enumerate(block):
            try:
                np.array([value], dtype=dtype)
            except (ValueError, OverflowError, TypeError):
                return start + offset
    raise AssertionError("a conversion failed but no single value fails")


def _check_finite(
    floats: np.ndarray,
    values: Sequence[str],
    field: Field,
    path: str | Path,
    line_numbers: np.ndarray,
) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(floats))
    if len(bad):
        index = int(bad[0])
        raise DataFormatError(
            path,
            f"{field.description} {values[index]!r} is not a finite number",
            line=int(line_numbers[index]),
        )
    return floats


def _parse_timestamps(
    values: Sequence[str], field: Field, path: str | Path, line_numbers: np.ndarray
) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError, TypeError):
        pass
    # Decimal timestamps (e.g. 964982703.5) are floored; integers above keep full precision.
    floats = np.floor(_check_finite(_convert(values, np.float64, field, path, line_numbers, "a number"),
                                    values, field, path, line_numbers))
    # Beyond int64 the cast wraps silently (1e26 became -9.2e18): refuse instead.
    outside = np.flatnonzero(np.abs(floats) >= 2.0**63)
    if len(outside):
        index = int(outside[0])
        raise DataFormatError(path, f"{field.description} {values[index]!r} is outside the range of a timestamp "
                                    "(64-bit seconds); is the column in the right unit?",
                              line=int(line_numbers[index]))
    return floats.astype(np.int64)


def _parse_ids(
    values: Sequence[str], field: Field, path: str | Path, line_numbers: np.ndarray
) -> np.ndarray:
    # Spaces around an id ("u1, i3") are layout, not part of it: kept, " i3" and "i3" would be two items.
    text = np.char.strip(np.asarray(values, dtype=np.str_))
    empty = np.flatnonzero(text == "")
    if len(empty):
        index = int(empty[0])
        raise DataFormatError(path, f"{field.description} is empty", line=int(line_numbers[index]))
    try:
        integers = text.astype(np.int64)
    except (ValueError, OverflowError):
        return text
    # Only ids that print back unchanged become integers, so "007" and "7" stay distinct.
    return integers if bool(np.all(integers.astype(np.str_) == text)) else text


def _concatenate(chunks: list[np.ndarray]) -> np.ndarray:
    """Joins per-block columns; integer id blocks become strings if any block had text ids."""
    if len(chunks) == 1:
        return np.ascontiguousarray(chunks[0])
    if any(chunk.dtype.kind == "U" for chunk in chunks):
        chunks = [chunk.astype(np.str_) for chunk in chunks]
    return np.concatenate(chunks)
