"""The run directory writes only strict JSON round records."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core.federated.records import RoundRecord
from recsys_core.run_records import NonFiniteValueError
from server.run_directory import RunDirectory


def test_a_round_record_with_a_nan_metric_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    directory = RunDirectory(tmp_path / "run")
    directory.append_round(RoundRecord(1, sampled=2, secure_aggregation=False, status="aggregated",
                                       validation={"full/ndcg@10": 0.1}))
    before = directory.rounds_file.read_bytes()
    with pytest.raises(NonFiniteValueError, match=r"rounds.jsonl.*NaN"):
        directory.append_round(RoundRecord(2, sampled=2, secure_aggregation=False, status="aggregated",
                                           validation={"full/ndcg@10": float("nan")}))
    assert directory.rounds_file.read_bytes() == before
    assert [record.round for record in directory.read_rounds()] == [1]
