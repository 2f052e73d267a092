"""Run-directory JSON is strict: no bare NaN or Infinity, which strict parsers refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recsys_core.errors import FedrecError
from recsys_core.run_records import NonFiniteValueError, strict_json_dumps, write_json


def strict_loads(text: str):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("nan", [float("nan"), np.float64("nan"), np.float32("nan")], ids=["float", "f64", "f32"])
def test_a_nan_is_refused_with_its_key_and_nothing_is_written(tmp_path: Path, nan) -> None:
    path = tmp_path / "metrics.json"
    with pytest.raises(NonFiniteValueError, match=r'metrics.json: \["test"\]\["sampled/ndcg@10"\] is NaN') as error:
        write_json(path, {"test": {"full/ndcg@10": 0.25, "sampled/ndcg@10": nan}})
    assert isinstance(error.value, FedrecError)
    assert not path.exists()
    with pytest.raises(NonFiniteValueError, match=r"history.jsonl, epoch 2: \[\"losses\"\]\[1\] is NaN"):
        strict_json_dumps({"losses": [0.5, nan]}, "history.jsonl, epoch 2")


def test_an_infinity_is_written_as_the_ledger_writes_an_infinite_epsilon(tmp_path: Path) -> None:
    # A run without differential privacy claims epsilon = infinity (fedrec audit).
    path = tmp_path / "audit.json"
    write_json(path, {"claims": {"epsilon": math.inf, "delta": 1e-5}, "bounds": (-math.inf, 1)})
    assert strict_loads(path.read_text()) == {"claims": {"epsilon": "Infinity", "delta": 1e-5},
                                              "bounds": ["-Infinity", 1]}


def test_finite_values_are_written_as_before(tmp_path: Path) -> None:
    payload = {"b": [1, 2.5, None, True], "a": {"x": "text", "path": Path("run")}}
    write_json(tmp_path / "out.json", payload)
    assert (tmp_path / "out.json").read_text() == json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
