"""The run directory: strict JSON records, a commit per round, and one clear error for every damaged file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys_core.errors import FedrecError
from recsys_core.federated.records import RoundRecord
from recsys_core.run_records import NonFiniteValueError
from server.run_directory import Checkpoint, RunDirectory, TornRecordError


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


def committed_run(path: Path, rounds: int = 3) -> RunDirectory:
    directory = RunDirectory(path)
    for number in range(1, rounds + 1):
        record = RoundRecord(number, sampled=2, secure_aggregation=False, status="aggregated", participants=2)
        directory.write_checkpoint(Checkpoint(number, {"w": np.full(4, float(number), dtype=np.float32)},
                                              {"m_t/w": np.zeros(4)}, record.to_dict()))
        directory.append_round(record)
    return directory


def flipped(path: Path, seed: int, count: int = 60) -> Iterator[int]:
    """Flips one byte of ``path`` at a time (``count`` seeded positions), restoring it after each."""
    original = path.read_bytes()
    for position in np.random.default_rng(seed).choice(len(original), size=min(count, len(original)), replace=False):
        damaged = bytearray(original)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        yield int(position)
    path.write_bytes(original)


@pytest.mark.parametrize("name", ["latest.json", "round-3.npz"])
def test_a_flipped_byte_in_the_checkpoint_is_one_clear_error_or_changes_nothing(tmp_path: Path, name: str) -> None:
    directory = committed_run(tmp_path / "run")
    expected = directory.read_checkpoint()
    assert expected is not None
    refused = 0
    for position in flipped(directory.path / "checkpoint" / name, seed=1):
        try:
            loaded = directory.read_checkpoint()
        except FedrecError as error:
            assert str(error).startswith(str(directory.path / "checkpoint")) and "\n" not in str(error)
            refused += 1
            continue
        assert loaded is not None and loaded.completed_round == 3 and loaded.record == expected.record, position
        assert np.array_equal(loaded.shared_parameters["w"], expected.shared_parameters["w"]), position
    assert refused > 0


def test_a_flipped_byte_in_the_records_fails_the_chain_or_is_one_clear_error(tmp_path: Path) -> None:
    directory = committed_run(tmp_path / "run")
    for position in flipped(directory.rounds_file, seed=2):
        try:
            integrity = RunDirectory(directory.path).verify_integrity(None)
        except FedrecError as error:
            assert "rounds.jsonl" in str(error)
            continue
        assert not integrity["passed"] or RunDirectory(directory.path).read_round_lines() == \
            directory.read_round_lines(), position


def test_a_torn_last_record_is_named_with_its_repair_and_resume_replays_it_from_the_checkpoint(tmp_path: Path) -> None:
    directory = committed_run(tmp_path / "run")
    whole = directory.rounds_file.read_bytes()
    directory.rounds_file.write_bytes(whole[: len(whole) - 40])  # killed while appending round 3's line
    with pytest.raises(TornRecordError, match=r"rounds.jsonl, line 3: incomplete \(the run was killed while writing "
                                              r"it\); `fedrec simulate --resume .*` repairs it"):
        RunDirectory(directory.path).read_rounds()
    reopened = RunDirectory(directory.path)
    assert reopened.resume_from(3) == 3
    checkpoint = reopened.read_checkpoint()
    assert checkpoint is not None
    reopened.rewind_to(checkpoint)
    assert directory.rounds_file.read_bytes() == whole
