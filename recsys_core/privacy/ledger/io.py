"""The ledger file: strict JSON in and out, every problem one :class:`LedgerError` naming the file and field.

Infinite epsilons are written as the string ``"Infinity"`` so the file stays strict JSON.
Reading goes through the typed config loader: every field present, no extra field, exact types.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from recsys_core.config import ConfigKeyError, dataclass_from_dict, dataclass_to_dict
from recsys_core.privacy.ledger.schema import FieldError, LedgerError, PrivacyLedger
from recsys_core.privacy.ledger.verification import validate
from recsys_core.run_records import decode_infinity

_INFINITY = "Infinity"


def _encode(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return _INFINITY
    return value


def ledger_to_dict(ledger: PrivacyLedger) -> dict[str, Any]:
    """The ledger as strict-JSON values: lists for tuples, ``"Infinity"`` for an infinite epsilon."""
    return dataclass_to_dict(ledger, encode=_encode)


def ledger_to_json(ledger: PrivacyLedger) -> str:
    """The ledger file's text, without the final newline."""
    return json.dumps(ledger_to_dict(ledger), indent=2, allow_nan=False)


def ledger_from_dict(values: Any, source: str | Path = "ledger") -> PrivacyLedger:
    """Parses and validates; any problem is a :class:`LedgerError` naming ``source`` and the field."""
    if not isinstance(values, dict):
        raise LedgerError(source, "ledger", f"expected an object, got {type(values).__name__}")
    try:
        ledger = dataclass_from_dict(PrivacyLedger, values, decoders={float: decode_infinity})
        validate(ledger)
    except ConfigKeyError as error:
        raise LedgerError(source, error.key, error.reason) from None
    except FieldError as error:
        raise LedgerError(source, error.field, error.message) from None
    return ledger


def write_ledger(ledger: PrivacyLedger, path: str | Path) -> Path:
    """Writes the ledger file (pretty-printed strict JSON, one final newline) and returns its path."""
    path = Path(path)
    path.write_text(ledger_to_json(ledger) + "\n", encoding="utf-8")
    return path


def load_ledger(path: str | Path) -> PrivacyLedger:
    """Reads and validates a ledger file; every problem is one :class:`LedgerError` naming the file and field."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LedgerError(path, "", "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LedgerError(path, "", f"not valid JSON: {error}") from None
    return ledger_from_dict(values, source=path)
