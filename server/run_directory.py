"""A federated run's directory: config, per-round records, checkpoints, final model, plots.

Everything that reads or writes a run directory lives here, the audit's reading included
(the record chain, the ledger), so there is one place that knows the layout.

Layout::

    RUN_DIR/config.json          the resolved FederatedConfig
    RUN_DIR/environment.json     Python, platform and package versions
    RUN_DIR/federation.json      the federation manifest: all the server knows besides the replies
    RUN_DIR/rounds.jsonl         one RoundRecord per completed round, hash-chained
    RUN_DIR/privacy-ledger.json  with DP: every device's schedule and the run's epsilons
    RUN_DIR/record-chain.json    the seal: last round's hash, ledger sha256, the head hash
    RUN_DIR/checkpoint/          the last completed round (global model + server optimiser state)
    RUN_DIR/devices/             simulated devices' own storage, named by the launcher (their private state)
    RUN_DIR/final-model/         the final global model bundle
    RUN_DIR/summary.json         final metrics, both protocols
    RUN_DIR/metrics.png          metrics over rounds
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.audit import hash_chain
from recsys_core.errors import ConfigError, FedrecError
from recsys_core.federated.cohort_state import COHORT_STATES_FILE, CohortStates, previous_generation
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.records import RoundRecord, round_record_from_dict
from recsys_core.federated.state_file import read_generations
from recsys_core.files import DAMAGED_FILE_ERRORS, file_sha256, write_atomically
from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.privacy.ledger import LedgerError, PrivacyLedger, load_ledger
from recsys_core.run_records import strict_json_dumps, write_json

CHECKPOINT_FORMAT = 1
LEDGER_FILE = "privacy-ledger.json"
SUMMARY_FILE = "summary.json"
#: What ``fedrec train`` writes beside its config.json (recsys_core/experiment.py): not a federated run.
TRAIN_RUN_FILES = ("history.jsonl", "metrics.json", "model.pt")


class NothingToResumeError(FedrecError):
    """A resumed run that has nothing left to do: sealed, summarised, every configured round recorded."""

    def __init__(self, path: Path, rounds: int) -> None:
        self.rounds = rounds
        super().__init__(f"{path}: this run is complete ({rounds} rounds); nothing to do — raise server.rounds "
                         "with --set to continue")


def open_run_directory(path: str | Path, use: str) -> tuple[RunDirectory, dict[str, Any]]:
    """An existing ``fedrec simulate`` run directory and its ``config.json``, read without creating or changing
    anything; each way a path can fail to be one (missing, a file, no or a damaged config.json, a ``fedrec train``
    run) is one error naming it. ``use`` is what asked (``--resume``, ``fedrec audit``).
    """
    folder = Path(path)
    config_path = folder / "config.json"
    what = f"{use} takes the folder fedrec simulate printed (the one holding config.json)"
    if folder.is_file():
        raise FedrecError(f"{folder}: is a file, not a run directory; {what}")
    if not folder.is_dir():
        raise FedrecError(f"{folder}: no such folder, not a fedrec run directory (no config.json); {what}")
    if not config_path.is_file():
        raise FedrecError(f"{folder}: not a fedrec run directory (no config.json); {what}")
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise FedrecError(f"{config_path}: damaged or truncated, not valid JSON (line {error.lineno}, column "
                          f"{error.colno}: {error.msg}); restore it from a backup: the record chain starts from "
                          "its exact content") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FedrecError(f"{config_path}: unreadable ({error}); restore it from a backup") from None
    if not isinstance(values, dict):
        raise FedrecError(f"{config_path}: damaged, holds a JSON {type(values).__name__}, not the run's config "
                          "object; restore it from a backup")
    if "server" not in values and ("train" in values or any((folder / name).exists() for name in TRAIN_RUN_FILES)):
        raise FedrecError(f"{folder}: this is a fedrec train run directory, not a simulate run; {use} works on the "
                          "folders fedrec simulate writes (rounds.jsonl, checkpoint/, record-chain.json)")
    try:
        FederatedConfig.from_dict(values)
    except ConfigError as error:  # named here: a bad value in the file is not one from the command line
        raise FedrecError(f"{config_path}: {error}; restore it from a backup: the record chain starts from its "
                          "exact content") from None
    return RunDirectory(folder), values


def _round_span(rounds: list[int]) -> str:
    if not rounds:
        return "no records"
    if rounds == list(range(rounds[0], rounds[-1] + 1)):
        return f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {rounds[0]}–{rounds[-1]}"
    return "rounds " + ", ".join(map(str, rounds))


@dataclass(frozen=True)
class Checkpoint:
    """A completed round's commit: the global model, the server optimiser's state and the round's record.

    The record (unchained, :meth:`RoundRecord.to_dict`) travels inside the checkpoint because the
    checkpoint is the commit point: a run killed after it but before ``rounds.jsonl`` got the line
    replays the record from here on resume, so no kill point loses a round's evidence.
    """

    completed_round: int
    shared_parameters: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray]
    record: dict[str, Any] | None = None


class TornRecordError(FedrecError):
    """The last line of ``rounds.jsonl`` is incomplete: the run was killed while appending it."""


class RunDirectory:
    """Reads and writes the files of one federated run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        #: The last chained record's hash, once known: appending then needs no re-read of the file.
        self._chain_head: str | None = None

    @property
    def rounds_file(self) -> Path:
        return self.path / "rounds.jsonl"

    @property
    def devices(self) -> Path:
        return self.path / "devices"

    @property
    def chain_file(self) -> Path:
        return self.path / "record-chain.json"

    def genesis(self) -> str:
        """The hash chain's start: the hash of ``config.json``'s content (empty if there is none yet)."""
        config_path = self.path / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        return hash_chain.genesis_hash(config)

    def append_round(self, record: RoundRecord) -> None:
        """Appends one round's record, linked to the one before, and flushes it before the next round starts."""
        if self._chain_head is None:
            self._chain_head = hash_chain.head_of(self.read_round_lines(), self.genesis())
        chained = hash_chain.linked(record.to_dict(), self._chain_head)
        with self.rounds_file.open("a", encoding="utf-8") as stream:
            stream.write(strict_json_dumps(chained, self.rounds_file, sort_keys=True) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self._chain_head = chained[hash_chain.CHAIN_KEY]["hash"]

    def read_round_lines(self, drop_torn_tail: bool = False) -> list[dict[str, Any]]:
        """The records as written, for the hash chain (which must hash exactly what is on disk).

        A last line that does not parse is a torn append (the run was killed while writing it):
        :class:`TornRecordError` says so and how to repair it, unless ``drop_torn_tail`` (resume,
        which replays that round's record from the checkpoint). Any other bad line is damage.
        """
        return [json.loads(line) for line in self._raw_round_lines(drop_torn_tail)]

    def _raw_round_lines(self, drop_torn_tail: bool) -> list[str]:
        if not self.rounds_file.exists():
            return []
        try:
            lines = [line for line in self.rounds_file.read_text(encoding="utf-8").split("\n") if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise FedrecError(f"{self.rounds_file}: unreadable ({error}); restore it from a backup") from None
        for number, line in enumerate(lines, start=1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                if number < len(lines):
                    raise FedrecError(f"{self.rounds_file}, line {number}: not a JSON round record (damaged); "
                                      "restore the file from a backup") from None
                if drop_torn_tail:
                    return lines[:-1]
                raise TornRecordError(f"{self.rounds_file}, line {number}: incomplete (the run was killed while "
                                      f"writing it); `fedrec simulate --resume {self.path}` repairs it from the "
                                      "checkpoint") from None
        return lines

    def read_rounds(self) -> list[RoundRecord]:
        """The typed round records; a line that breaks the schema is one error naming the file and line."""
        return [round_record_from_dict(values, f"{self.rounds_file}, line {number}")
                for number, values in enumerate(self.read_round_lines(), start=1)]

    def resume_from(self, rounds: int) -> int:
        """The round a resumed run continues after (0: from the start), checked before anything runs or is written.

        Raises :class:`NothingToResumeError` when the run is sealed and summarised and every
        one of the ``rounds`` configured rounds is recorded, and one :class:`FedrecError`
        naming the file when the records and the checkpoint disagree. Records of rounds after the checkpoint
        are an interrupted round (dropped on resume). The checkpoint's own round may lack its line
        (killed between the checkpoint and the append, or while appending): resume replays it from
        the checkpoint. Any other round up to the checkpoint without its record, or records without a
        checkpoint, would leave a gap in the record chain.
        """
        lines = self.read_round_lines(drop_torn_tail=True)
        recorded: list[int] = []
        for number, values in enumerate(lines, start=1):
            value = values.get("round")
            if not isinstance(value, int) or isinstance(value, bool):
                raise FedrecError(f"cannot resume: {self.rounds_file}, record {number}: no round number "
                                  f"({value!r}); the records are damaged; nothing was changed")
            recorded.append(value)
        # Round 1's record chains from config.json; other orders are the out-of-order checks' business.
        first_link = lines[0].get(hash_chain.CHAIN_KEY) if lines and lines[0].get("round") == 1 else None
        if isinstance(first_link, dict) and first_link.get("previous") != self.genesis():
            raise FedrecError(f"cannot resume: {self.path / 'config.json'} is not the config this run started with "
                              f"(the first record of {self.rounds_file} chains from another); restore it, or start a "
                              "new run with the new settings; nothing was changed")
        in_order = recorded == list(range(1, len(recorded) + 1))
        if in_order and len(recorded) >= rounds and self.chain_file.exists() and (self.path / SUMMARY_FILE).exists():
            raise NothingToResumeError(self.path, len(recorded))
        checkpoint = self.read_checkpoint()
        if checkpoint is None:
            if recorded:
                raise FedrecError(f"cannot resume: {self.rounds_file} holds {_round_span(recorded)} but "
                                  f"{self.path / 'checkpoint'} is missing (no latest.json), so the model they led to "
                                  "is lost; nothing was changed: start a new run")
            if self.chain_file.exists():  # starting afresh would re-seal a finished run's directory
                raise FedrecError(f"cannot resume: {self.chain_file} seals a finished run, but {self.rounds_file} "
                                  f"holds no records and {self.path / 'checkpoint'} is missing: its records were "
                                  "removed; nothing was changed: start a new run")
            return 0
        last = checkpoint.completed_round
        where = f"{self.path / 'checkpoint'} is after round {last}"
        if last > rounds:
            raise FedrecError(f"cannot resume: {where}, past server.rounds = {rounds}; resume with "
                              f"--set server.rounds=N, N ≥ {last}; nothing was changed")
        mismatch = "the records do not match the checkpoint; nothing was changed"
        missing = sorted(set(range(1, last + 1)) - set(recorded))
        if missing == [last] and checkpoint.record is not None and len(recorded) == last - 1:
            missing = []  # the checkpoint's round, committed but not yet appended: rewind_to replays it
        if missing:
            raise FedrecError(f"cannot resume: {self.rounds_file} holds {_round_span(recorded)} but {where}: "
                              f"{_round_span(missing)} {'has' if len(missing) == 1 else 'have'} no record; {mismatch}")
        for index, number in enumerate(recorded):
            if (index < last and number != index + 1) or (index >= last and number <= last):
                raise FedrecError(f"cannot resume: {self.rounds_file}, record {index + 1}: round {number} out of "
                                  f"order (repeated or moved), and {where}; {mismatch}")
        return last

    def rewind_to(self, checkpoint: Checkpoint) -> None:
        """Makes ``rounds.jsonl`` end with the checkpoint's round, atomically, before a resumed run goes on.

        Drops records of rounds after it (an interrupted round) and a torn last line, and appends
        the checkpoint's own record when the run was killed before it reached the file.
        """
        kept = [line for line in self._raw_round_lines(drop_torn_tail=True)
                if json.loads(line).get("round", 0) <= checkpoint.completed_round]
        self._chain_head = hash_chain.head_of([json.loads(line) for line in kept], self.genesis())
        recorded = json.loads(kept[-1]).get("round") if kept else 0
        if checkpoint.record is not None and recorded == checkpoint.completed_round - 1:
            chained = hash_chain.linked(checkpoint.record, self._chain_head)
            kept.append(strict_json_dumps(chained, self.rounds_file, sort_keys=True))
            self._chain_head = chained[hash_chain.CHAIN_KEY]["hash"]
        text = "".join(line + "\n" for line in kept)
        write_atomically(self.rounds_file, lambda stream: stream.write(text.encode("utf-8")))

    def seal(self, ledger: Path | None) -> str:
        """Writes the chain's seal over the rounds and the ledger file; returns the head hash to keep."""
        ledger_sha256 = hashlib.sha256(ledger.read_bytes()).hexdigest() if ledger is not None else None
        rounds = self.read_round_lines()
        sealed = hash_chain.seal(hash_chain.head_of(rounds, self.genesis()), len(rounds), ledger_sha256)
        write_json(self.chain_file, sealed)
        return str(sealed["head"])

    @property
    def ledger_file(self) -> Path:
        return self.path / LEDGER_FILE

    def read_ledger(self) -> tuple[PrivacyLedger | None, str | None]:
        """The run's privacy ledger, or None with why not (None, None: the run used no DP)."""
        if not self.ledger_file.exists():
            return None, None
        try:
            return load_ledger(self.ledger_file), None
        except LedgerError as error:
            return None, str(error)

    def device_accountants(self) -> dict[int, PrivacyAccountant] | None:
        """What each simulated device's own accountant says it spent (its newest state in ``devices/``), or None
        when the run directory holds no device state (deployed devices keep theirs on their own disks)."""
        cohort = self.devices / COHORT_STATES_FILE
        if cohort.exists() or previous_generation(cohort).exists():
            states = CohortStates.load_newest(cohort).states
        else:
            files = [path for path in sorted(self.devices.glob("device-*.npz")) if ".previous" not in path.name]
            if not files:
                return None
            states = {}
            for path in files:
                if generations := read_generations(path):
                    states[int(path.stem.removeprefix("device-"))] = generations[-1][1]
        return {partition: PrivacyAccountant.from_dict(state.privacy_accountant)
                for partition, state in states.items() if state.privacy_accountant is not None}

    def verify_integrity(self, expected_head: str | None) -> dict[str, Any]:
        """The hash chain over config, rounds and ledger, checked against the seal (and the head kept outside)."""
        rounds = self.read_round_lines()
        genesis = self.genesis()
        problems = [str(problem) for problem in hash_chain.verify_chain(rounds, genesis)]
        ledger_sha256 = hashlib.sha256(self.ledger_file.read_bytes()).hexdigest() if self.ledger_file.exists() \
            else None
        head = None
        if self.chain_file.exists():
            sealed = json.loads(self.chain_file.read_text(encoding="utf-8"))
            head = sealed.get("head")
            problems += [str(problem) for problem in hash_chain.verify_seal(rounds, genesis, sealed, ledger_sha256,
                                                                            expected_head)]
        else:
            problems.append("record-chain.json: missing: the run never finished, or the seal was removed")
        return {"passed": not problems, "problems": problems, "rounds": len(rounds), "head": head,
                "expected_head_checked": expected_head is not None}

    def write_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Commits a round: the arrays first, then ``latest.json`` naming them (with their sha256) and the
        round's record, renamed into place in one step."""
        folder = self.path / "checkpoint"
        folder.mkdir(exist_ok=True)
        arrays = {f"shared/{k}": v for k, v in checkpoint.shared_parameters.items()}
        arrays.update({f"strategy/{k}": v for k, v in checkpoint.strategy_state.items()})
        name = f"round-{checkpoint.completed_round}.npz"
        write_atomically(folder / name, lambda stream: np.savez(stream, **arrays))  # type: ignore[arg-type]
        write_json(folder / "latest.json", {"format": CHECKPOINT_FORMAT, "completed_round": checkpoint.completed_round,
                                            "arrays": name, "arrays_sha256": file_sha256(folder / name),
                                            "record": checkpoint.record})
        for stale in folder.glob("round-*.npz"):
            if stale.name != name:
                stale.unlink(missing_ok=True)

    def read_checkpoint(self) -> Checkpoint | None:
        """The last completed round's checkpoint, or ``None`` if the run never completed a round.

        Anything wrong with it (damaged JSON, a flipped byte in the arrays, a missing file) is one
        :class:`FedrecError` naming the folder.
        """
        manifest_path = self.path / "checkpoint" / "latest.json"
        if not manifest_path.exists():
            return None
        damaged = f"{manifest_path.parent}: checkpoint is damaged"
        advice = "start a new run, or restore the folder from a backup"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
                raise FedrecError(f"{manifest_path}: not a checkpoint of format {CHECKPOINT_FORMAT}; {advice}")
            arrays_path = manifest_path.parent / str(manifest["arrays"])
            if file_sha256(arrays_path) != manifest["arrays_sha256"]:
                raise FedrecError(f"{damaged} ({arrays_path.name}: sha256 does not match latest.json); {advice}")
            with np.load(arrays_path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            completed_round = manifest["completed_round"]
            record = manifest.get("record")
            if not isinstance(completed_round, int) or not (record is None or isinstance(record, dict)):
                raise FedrecError(f"{damaged} (latest.json: bad completed_round or record); {advice}")
            # Its round, its arrays' name and its record's round are written together: one edited alone
            # would make --resume apply a round twice or skip one.
            if manifest["arrays"] != f"round-{completed_round}.npz" or (
                    record is not None and record.get("round") != completed_round):
                raise FedrecError(f"{damaged} (latest.json: completed_round {completed_round} does not match its "
                                  f"arrays {manifest['arrays']!r} and record); {advice}")
        except DAMAGED_FILE_ERRORS as error:
            raise FedrecError(f"{damaged} ({type(error).__name__}: {error}); {advice}") from None
        return Checkpoint(
            completed_round=completed_round,
            shared_parameters={k.removeprefix("shared/"): v for k, v in arrays.items() if k.startswith("shared/")},
            strategy_state={k.removeprefix("strategy/"): v for k, v in arrays.items() if k.startswith("strategy/")},
            record=record,
        )

    def write_plots(self, rounds: list[RoundRecord]) -> Path | None:
        """``metrics.png``: training loss and validation metrics over rounds."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not rounds:
            return None
        figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
        trained = [r for r in rounds if r.train_loss is not None]
        loss_axis.plot([r.round for r in trained], [r.train_loss for r in trained], marker=".")
        loss_axis.set(title="training loss (mean over devices)", xlabel="round", ylabel="loss")
        if not trained:
            # Empty axes read as a broken run; say why there is nothing to draw.
            _say_no_data(loss_axis, "no training loss reported:\na DP device reports none (the exact loss\n"
                                    "is outside the guarantee),\nnor does a model fitted by counting")
        evaluated = [r for r in rounds if r.validation]
        for metric in ("full/ndcg@10", "full/hr@10", "sampled/hr@10"):
            points = [(r.round, r.validation[metric]) for r in evaluated if r.validation and metric in r.validation]
            if points:
                metric_axis.plot(*zip(*points), marker="o", label=metric)
        metric_axis.set(title="federated validation", xlabel="round")
        if evaluated:
            metric_axis.legend()
        else:
            _say_no_data(metric_axis, "no validation yet\n(server.evaluate_every = 0, or not reached);\n"
                                      "the final test is in summary.json")
        figure.tight_layout()
        path = self.path / "metrics.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path


def _say_no_data(axis: Any, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, fontsize=9, color="grey")
    axis.set_xticks([])
    axis.set_yticks([])
