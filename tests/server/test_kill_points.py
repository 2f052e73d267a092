"""SIGKILL at every point of a round's commit, then ``--resume``: no lost record, no failed audit, no overspent budget.

Each case forks the test process, arms one kill point in the child (a real ``SIGKILL`` the
child sends itself at that point of round 2, or of the run's end) and runs the cohort engine
there. The parent then resumes the run directory the dead child left and checks it against
an uninterrupted run of the same config: the same final model, the same records (time
aside), a record chain and ledger that pass the audit's checks, and, under local DP, a
ledger equal to the devices' own accountants and within their budget.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import recsys_core.bundle
import server.run_directory
from recsys_core.audit.formal import check_against_log, check_device_accountants
from recsys_core.federated.cohort_state import CohortStates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.records import RoundRecord
from recsys_core.privacy.accountant import PrivacyAccountant, ScheduleEntry
from server.cohort_engine import COHORT_STATES_FILE, CohortRun
from server.run_directory import RunDirectory
from server.simulate import run_federated_simulation

KILL_ROUND = 2
ROUNDS = 3
# Seeded noise, so the resumed run can be compared with the uninterrupted one bit for bit.
LOCAL_DP = {"local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 50.0, "target_delta": 1e-3},
            "noise_source": "run_seed"}


def config_for(output: Path, private: bool) -> FederatedConfig:
    return FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": 10, "n_items": 30, "seed": 4}},
        "model": {"name": "neumf", "options": {"gmf_dim": 4, "mlp_layers": [8, 4]}},
        "local": {"epochs": 1, "learning_rate": 0.01, "optimizer": "adam"},
        "server": {"rounds": ROUNDS, "devices_per_round": 5, "min_devices": 2, "evaluate_every": 1,
                   "devices_per_evaluation": 5},
        "simulation": {"engine": "cohort", "batching": "off"},
        "privacy": LOCAL_DP if private else {},
        "output_dir": str(output),
        "private": False,
    })


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(cls: Any, name: str, when: Callable[..., bool]) -> None:
    """Kills the process right after ``cls.name`` returns, for calls where ``when(*args)`` holds."""
    original = getattr(cls, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return result
    setattr(cls, name, wrapped)


def before(module: Any, name: str, when: Callable[..., bool]) -> None:
    """Kills the process as ``module.name`` is called, for calls where ``when(*args)`` holds."""
    original = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            die()
        return original(*args, **kwargs)
    setattr(module, name, wrapped)


def torn_append(directory: RunDirectory, record: RoundRecord) -> None:
    """Writes the first half of the round's line, as a kill during the append leaves it."""
    if record.round != KILL_ROUND:
        return ORIGINAL_APPEND(directory, record)
    line = json.dumps({**record.to_dict(), "chain": {"previous": "0" * 64, "hash": "0" * 64}})
    with directory.rounds_file.open("a", encoding="utf-8") as stream:
        stream.write(line[: len(line) // 2])
    die()


ORIGINAL_APPEND = RunDirectory.append_round


def is_kill_round(_: Any, value: Any, *rest: Any) -> bool:
    number = value.completed_round if hasattr(value, "completed_round") else value
    return bool(number == KILL_ROUND)


KILL_POINTS: dict[str, Callable[[], None]] = {
    # Round 2's updates reached the server; nothing of the round is written yet.
    "after the exchange": lambda: after(CohortRun, "training_exchange", lambda _, __, ___, r: r == KILL_ROUND),
    # The devices' new states are on disk; the checkpoint still names round 1.
    "after the device states": lambda: after(CohortRun, "save_device_states", is_kill_round),
    # The checkpoint's arrays are written; latest.json still names round 1.
    "inside the checkpoint": lambda: before(server.run_directory, "write_json",
                                            lambda path, values: Path(path).name == "latest.json"
                                            and values["completed_round"] == KILL_ROUND),
    # The round is committed (checkpoint with its record); rounds.jsonl lacks its line.
    "after the checkpoint": lambda: after(RunDirectory, "write_checkpoint", is_kill_round),
    # Half of round 2's line is in rounds.jsonl.
    "during the append": lambda: setattr(RunDirectory, "append_round", torn_append),
    "after the append": lambda: after(RunDirectory, "append_round", lambda _, record: record.round == KILL_ROUND),
    # The last round is recorded; the final model is being replaced.
    "between the bundle's renames": lambda: before(recsys_core.bundle, "replace_folder", lambda *_: True),
    "after the final model": lambda: after(recsys_core.bundle, "replace_folder", lambda *_: True),
}


def killed_run(output: Path, private: bool, point: str) -> Path:
    """The run directory a run killed at ``point`` leaves."""
    run_dir = output / "run"
    pid = os.fork()
    if pid == 0:  # the child: arm the kill point, run, and never return to pytest
        try:
            # Another kill point's patches must not leak in: each child starts from the parent's modules.
            KILL_POINTS[point]()
            run_federated_simulation(config_for(output, private), run_dir=str(run_dir))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point}: the run was not killed"
    return run_dir


def final_model(directory: RunDirectory) -> dict[str, np.ndarray]:
    with np.load(directory.path / "final-model" / "parameters.npz") as stored:
        return {name: stored[name] for name in stored.files}


def timeless(record: RoundRecord) -> RoundRecord:
    return dataclasses.replace(record, seconds=0.0, chain=None)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[bool, RunDirectory]:
    output = tmp_path_factory.mktemp("whole")
    return {private: run_federated_simulation(config_for(output / str(private), private))[0]
            for private in (False, True)}


def device_accountants(directory: RunDirectory) -> dict[int, tuple[ScheduleEntry, ...]]:
    """Each device's own accountant history, as its state on disk holds it."""
    states = CohortStates.load(directory.devices / COHORT_STATES_FILE, ROUNDS)
    return {partition: PrivacyAccountant.from_dict(state.privacy_accountant).history
            for partition, state in states.states.items() if state.privacy_accountant is not None}


@pytest.mark.parametrize("private", [False, True], ids=["plain", "local-dp"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_here_resumes_to_the_uninterrupted_result(tmp_path: Path, uninterrupted, point: str,
                                                               private: bool) -> None:
    run_dir = killed_run(tmp_path, private, point)
    resumed, summary = run_federated_simulation(config_for(tmp_path, private), run_dir=str(run_dir), resume=True)
    whole = uninterrupted[private]
    expected, measured = final_model(whole), final_model(resumed)
    for name in expected:
        np.testing.assert_array_equal(expected[name], measured[name], err_msg=name)
    assert [timeless(r) for r in resumed.read_rounds()] == [timeless(r) for r in whole.read_rounds()]
    integrity = resumed.verify_integrity(summary["record_chain_head"])
    assert integrity["passed"], integrity["problems"]
    if private:
        ledger, problem = resumed.read_ledger()
        assert ledger is not None, problem
        checks = check_against_log(ledger, json.loads((run_dir / "config.json").read_text()), resumed.read_rounds())
        # Seeded noise is rightly flagged as not private; every other check of the ledger against the log holds.
        assert [check.name for check in checks if not check.passed] == ["DP noise from OS entropy"], checks
        accountants = device_accountants(resumed)
        assert accountants and check_device_accountants(ledger, resumed.device_accountants() or {}).passed
        for device in ledger.devices:
            # The ledger is what each device's own accountant says it spent, and within its budget.
            assert device.local_schedule == accountants.get(int(device.device_id), ()), device.device_id
            assert device.local_epsilon is None or device.local_epsilon <= LOCAL_DP["local"]["target_epsilon"]
