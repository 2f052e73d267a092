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


@pytest.mark.parametrize("with_data", [False, True])
def test_the_plot_says_why_a_panel_is_empty(tmp_path: Path, monkeypatch, with_data: bool) -> None:
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda figure: (figures.append(figure), close(figure)))
    directory = RunDirectory(tmp_path / "run")
    records = [RoundRecord(r, sampled=2, secure_aggregation=False, status="aggregated",
                           train_loss=0.5 if with_data else None,
                           validation={"full/ndcg@10": 0.1} if with_data else None) for r in (1, 2)]
    assert directory.write_plots(records) == directory.path / "metrics.png"
    notes = [text.get_text() for axis in figures[0].axes for text in axis.texts]
    if with_data:
        assert notes == []
    else:
        assert any("no training loss" in note for note in notes) and any("no validation" in note for note in notes)
