"""The example ledger as a built object and as the JSON values of its file."""

from __future__ import annotations

import json
from typing import Any

import pytest

from recsys_core.privacy.ledger import PrivacyLedger
from tests.recsys_core.privacy.ledger.example_ledger import make_ledger


@pytest.fixture(scope="module")
def ledger() -> PrivacyLedger:
    return make_ledger()


@pytest.fixture
def ledger_values(ledger) -> dict[str, Any]:
    return json.loads(ledger.to_json())
