"""The checks the server runs on every device reply before aggregating it."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.federated.wire import update_problem

REFERENCE = {"item.weight": np.zeros((5, 2), dtype=np.float32), "bias": np.zeros(2, dtype=np.float32)}


def test_a_well_formed_update_passes() -> None:
    assert update_problem({name: value + 1 for name, value in REFERENCE.items()}, REFERENCE) is None


@pytest.mark.parametrize(("arrays", "words"), [
    ({"item.weight": np.zeros((5, 2), dtype=np.float32)}, "missing ['bias']"),
    ({**REFERENCE, "user.weight": np.zeros((1, 2))}, "unexpected ['user.weight']"),
    ({**REFERENCE, "bias": np.zeros(3, dtype=np.float32)}, "'bias' has shape (3,), expected (2,)"),
    ({**REFERENCE, "bias": np.array([0.0, np.nan], dtype=np.float32)}, "'bias' holds NaN"),
    ({**REFERENCE, "bias": np.array([np.inf, 0.0])}, "'bias' holds NaN or infinite"),
    ({**REFERENCE, "bias": np.array([1, 2])}, "'bias' has dtype int64"),
])
def test_a_malformed_or_hostile_update_is_named(arrays, words) -> None:
    problem = update_problem(arrays, REFERENCE)
    assert problem is not None and words in problem
