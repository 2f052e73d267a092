"""``fedrec simulate --resume`` and ``fedrec audit`` refuse what they cannot use, before Ray starts, changing nothing.

The run directories here are written by the same :class:`RunDirectory` methods a run
uses (config, environment, manifest, checkpoint then record each round, summary, seal),
without the simulation engine: every case is decided before the data is read or Ray starts.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys_core.experiment import ExperimentConfig
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.manifest import MANIFEST_FILE
from recsys_core.federated.records import RoundRecord
from recsys_core.run_records import write_json
from server.cli import main
from server.run_directory import Checkpoint, NothingToResumeError, RunDirectory
from server.server_app import prepare_run_directory

ROUNDS = 3
COMPLETE = "this run is complete (3 rounds); nothing to do — raise server.rounds with --set to continue"


def tiny_config(rounds: int = ROUNDS) -> FederatedConfig:
    return FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": 12, "n_items": 40, "seed": 2}},
        "model": {"name": "neumf", "options": {"gmf_dim": 4, "mlp_layers": [8, 4]}},
        "server": {"rounds": rounds, "devices_per_round": 6, "min_devices": 3},
        "private": False,
    })


def write_run(path: Path, checkpointed: int = ROUNDS, recorded: int = ROUNDS, finished: bool = True) -> Path:
    """A run directory as a run leaves it: each round checkpointed, then recorded; sealed when finished."""
    config = tiny_config()
    directory = prepare_run_directory(config, str(path), resume=False)
    load_federated_data(config.data, config.partition).manifest(config.data.dataset).write(path / MANIFEST_FILE)
    for server_round in range(1, max(checkpointed, recorded) + 1):
        if server_round <= checkpointed:
            directory.write_checkpoint(Checkpoint(server_round, {"w": np.full(3, float(server_round))}, {}))
        if server_round <= recorded:
            directory.append_round(RoundRecord(round=server_round, sampled=6, secure_aggregation=False,
                                               status="aggregated", participants=6, seconds=0.1))
    if finished:
        write_json(path / "summary.json", {"rounds": ROUNDS, "record_chain_head": directory.seal(None)})
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (an absent path: nothing), to prove a refusal wrote nothing."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], path: Path) -> str:
    """Runs the CLI, checks exit code 2, one line on stderr and no file changed; returns the line."""
    before = snapshot(path)
    existed = path.exists()
    assert main(argv) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith("error: ") and "\n" not in error, captured.err
    assert "Traceback" not in captured.err and "Ray" not in captured.out
    assert path.exists() == existed and snapshot(path) == before
    return error


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


def test_a_finished_run_says_it_is_complete_and_exits_at_once(finished_run: Path, capsys) -> None:
    before = snapshot(finished_run)
    assert main(["simulate", "--resume", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert COMPLETE in out and "starting Ray workers" not in out
    # Fewer rounds asked for than were run: complete too.
    assert main(["simulate", "--resume", str(finished_run), "--set", "server.rounds=2"]) == 0
    assert COMPLETE in capsys.readouterr().out
    assert snapshot(finished_run) == before
    # flwr run's ServerApp prepares the directory the same way.
    with pytest.raises(NothingToResumeError, match="nothing to do"):
        prepare_run_directory(tiny_config(), str(finished_run), resume=True)


def test_a_finished_run_with_more_rounds_asked_for_continues_after_its_checkpoint(finished_run: Path) -> None:
    assert RunDirectory(finished_run).resume_from(ROUNDS + 2) == ROUNDS


def test_records_after_the_checkpoint_are_an_interrupted_round(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", checkpointed=2, recorded=3, finished=False)
    assert RunDirectory(run).resume_from(ROUNDS) == 2
    assert RunDirectory(write_run(tmp_path / "fresh", 0, 0, finished=False)).resume_from(ROUNDS) == 0


def test_a_missing_checkpoint_with_records_is_refused(finished_run: Path, capsys) -> None:
    for path in sorted((finished_run / "checkpoint").iterdir()):
        path.unlink()
    (finished_run / "checkpoint").rmdir()
    (finished_run / "summary.json").unlink()  # interrupted, or the check for a finished run would answer first
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert f"{finished_run / 'rounds.jsonl'} holds rounds 1–3 but {finished_run / 'checkpoint'} is missing" in error
    assert "nothing was changed" in error


def test_an_empty_rounds_file_is_refused_not_resealed(finished_run: Path, capsys) -> None:
    (finished_run / "rounds.jsonl").write_text("")
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert f"{finished_run / 'rounds.jsonl'} holds no records but {finished_run / 'checkpoint'} is after round 3" \
        in error
    assert "rounds 1–3 have no record" in error and "do not match the checkpoint" in error


def test_a_sealed_run_stripped_of_its_records_and_checkpoint_is_refused_not_resealed(finished_run: Path,
                                                                                   capsys) -> None:
    (finished_run / "rounds.jsonl").write_text("")
    shutil.rmtree(finished_run / "checkpoint")
    (finished_run / "summary.json").unlink()
    seal = (finished_run / "record-chain.json").read_bytes()
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert f"{finished_run / 'record-chain.json'} seals a finished run" in error and "records were removed" in error
    assert (finished_run / "record-chain.json").read_bytes() == seal


@pytest.mark.parametrize("override", ["seed=5", "privacy.user_level.noise_multiplier=0.3", "model.name=\"sasrec\""])
def test_a_resumed_run_refuses_a_changed_setting(finished_run: Path, capsys, override: str) -> None:
    # Changing them mid-run would make the records and the ledger describe a run that did not happen.
    error = refused(capsys, ["simulate", "--resume", str(finished_run), "--set", override], finished_run)
    key = override.split("=")[0]
    assert f"--set {key}: a resumed run keeps the settings it started with" in error
    assert "only server.rounds, data.data_dir" in error


def test_an_edited_config_json_is_refused_on_resume(finished_run: Path, capsys) -> None:
    config = finished_run / "config.json"
    values = json.loads(config.read_text())
    values["seed"] = values.get("seed", 0) + 1  # still a valid config: only the chain can tell
    config.write_text(json.dumps(values))
    (finished_run / "summary.json").unlink()  # so that resume does not stop at "complete"
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert f"{config} is not the config this run started with" in error


def test_an_edited_federation_manifest_is_refused_on_resume(finished_run: Path, capsys) -> None:
    manifest = finished_run / "federation.json"
    values = json.loads(manifest.read_text())
    values["max_training_rows"] = 10**9  # would let one device outweigh the others
    manifest.write_text(json.dumps(values))
    (finished_run / "summary.json").unlink()
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert f"{manifest}: does not match the federation this data gives" in error


def test_a_checkpoint_whose_round_was_edited_is_refused(finished_run: Path, capsys) -> None:
    latest = finished_run / "checkpoint" / "latest.json"
    manifest = json.loads(latest.read_text())
    manifest["completed_round"] -= 1  # would replay the last round a second time
    latest.write_text(json.dumps(manifest))
    (finished_run / "summary.json").unlink()
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert "checkpoint is damaged (latest.json: completed_round" in error and "does not match its arrays" in error


def test_a_record_missing_before_the_checkpoint_is_refused(finished_run: Path, capsys) -> None:
    lines = (finished_run / "rounds.jsonl").read_text().splitlines(keepends=True)
    (finished_run / "rounds.jsonl").write_text(lines[0] + lines[2])
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert f"{finished_run / 'rounds.jsonl'} holds rounds 1, 3 but {finished_run / 'checkpoint'} is after round " \
        "3: round 2 has no record" in error


def test_records_out_of_order_before_the_checkpoint_are_refused(finished_run: Path, capsys) -> None:
    lines = (finished_run / "rounds.jsonl").read_text().splitlines(keepends=True)
    (finished_run / "rounds.jsonl").write_text(lines[1] + lines[0] + lines[2])
    error = refused(capsys, ["simulate", "--resume", str(finished_run)], finished_run)
    assert f"{finished_run / 'rounds.jsonl'}, record 1: round 2 out of order" in error


def test_the_last_round_unrecorded_before_its_checkpoint_is_refused(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "run", checkpointed=3, recorded=2, finished=False)
    error = refused(capsys, ["simulate", "--resume", str(run)], run)
    assert "holds rounds 1–2 but" in error and "round 3 has no record" in error


def test_a_checkpoint_past_the_configured_rounds_is_refused(tmp_path: Path, capsys) -> None:
    run = write_run(tmp_path / "run", finished=False)
    error = refused(capsys, ["simulate", "--resume", str(run), "--set", "server.rounds=2"], run)
    assert "is after round 3, past server.rounds = 2" in error


def write_train_run(path: Path) -> Path:
    """What ``fedrec train`` leaves (recsys_core/experiment.py): its config, metrics and history."""
    path.mkdir()
    write_json(path / "config.json", ExperimentConfig.from_dict({}).to_dict())
    write_json(path / "metrics.json", {"test": {}})
    (path / "history.jsonl").write_text("{}\n")
    return path


@pytest.mark.parametrize("command", [["simulate", "--resume"], ["audit"]], ids=["resume", "audit"])
def test_what_is_not_a_simulate_run_gets_one_clear_error(tmp_path: Path, capsys, command: list[str]) -> None:
    use = "--resume" if command[0] == "simulate" else "fedrec audit"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run")
    assert f"{a_file}: is a file, not a run directory; {use} takes the folder" in \
        refused(capsys, [*command, str(a_file)], a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: not a fedrec run directory (no config.json)" in refused(capsys, [*command, str(empty)], empty)
    nowhere = tmp_path / "nowhere"
    assert f"{nowhere}: no such folder, not a fedrec run directory (no config.json)" in \
        refused(capsys, [*command, str(nowhere)], nowhere)
    train = write_train_run(tmp_path / "train-run")
    assert f"{train}: this is a fedrec train run directory, not a simulate run" in \
        refused(capsys, [*command, str(train)], train)


@pytest.mark.parametrize("command", [["simulate", "--resume"], ["audit"]], ids=["resume", "audit"])
@pytest.mark.parametrize(("content", "words"), [
    (lambda text: text[: len(text) // 2], "damaged or truncated, not valid JSON (line"),
    (lambda text: "", "damaged or truncated, not valid JSON (line 1, column 1"),
    (lambda text: "[1, 2]", "damaged, holds a JSON list, not the run's config object"),
    (lambda text: b"\x80\xff\x00binary", "unreadable ("),
    (lambda text: json.dumps({**json.loads(text), "seed": "seven"}), "seed: expected int, got 'seven'"),
    (lambda text: json.dumps({**json.loads(text), "local": {**json.loads(text)["local"], "learning_rate": math.nan}}),
     "local.learning_rate: is NaN"),
], ids=["truncated", "empty", "not-an-object", "binary", "wrong-type", "nan-value"])
def test_a_damaged_config_gets_one_clear_error(finished_run: Path, capsys, command: list[str], content: Any,
                                              words: str) -> None:
    config = finished_run / "config.json"
    damaged = content(config.read_text())
    if isinstance(damaged, bytes):
        config.write_bytes(damaged)
    else:
        config.write_text(damaged)
    assert f"{config}: {words}" in refused(capsys, [*command, str(finished_run)], finished_run)


@pytest.mark.parametrize("head", ["zzz", "HEAD", "80bf99", "g" * 64, "0" * 65])
def test_an_expected_head_that_is_not_one_is_refused_before_any_audit_work(finished_run: Path, capsys,
                                                                           head: str) -> None:
    error = refused(capsys, ["audit", str(finished_run), "--expected-head", head], finished_run)
    assert f"--expected-head: not a 64-hex-digit record chain head: {head!r}" in error


def test_simulate_closes_with_the_audit_command_holding_the_real_head(finished_run: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import server.simulate

    head = json.loads((finished_run / "record-chain.json").read_text())["head"]
    summary = {"rounds": ROUNDS, "seconds_total": 1.0, "failures_total": 0, "bytes_up_total": 0,
               "bytes_down_total": 0, "record_chain_head": head}
    monkeypatch.setattr(server.simulate, "run_federated_simulation",
                        lambda *args, **kwargs: (RunDirectory(finished_run), summary))
    assert main(["simulate", "--rounds", "1", "--output-dir", str(finished_run.parent)]) == 0
    out = capsys.readouterr().out
    assert f"fedrec audit {finished_run} --expected-head {head} proves nothing was rewritten" in out
    assert "HEAD" not in out
