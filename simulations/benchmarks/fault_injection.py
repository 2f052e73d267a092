"""Byte flips in every file a run keeps, and SIGKILLs at random moments, longer than CI can afford.

``--part flips``: a small cohort run with local DP leaves a run directory; then each file a
reader trusts (the bundle's manifest and parameters, the checkpoint's ``latest.json`` and
arrays, ``rounds.jsonl``, the devices' state in both formats, the federation manifest) has
one byte flipped at a time, at ``--flips`` seeded positions, and is read back the way fedrec
reads it. Each flip ends one of four ways: the project's own one-line error, no effect (the
content read is unchanged, e.g. a flip in JSON whitespace or a zip header's timestamp), an
undetected change, or a raw exception.

``--part kills``: the same run, started and SIGKILLed at a random moment, resumed and
killed again, until it completes; each trial's final model, records and ledger are checked
against an uninterrupted run's (same model bit for bit, same records time aside, record
chain intact, the ledger's checks and the devices' own accountants). Random moments land
anywhere: in training, in evaluation, in every write.

    python -m simulations.benchmarks.fault_injection --part flips [--flips 300]
    python -m simulations.benchmarks.fault_injection --part kills [--trials 20]

Prints a Markdown table (and JSON lines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recsys_core.audit.formal import check_against_log, check_device_accountants
from recsys_core.bundle import read_bundle
from recsys_core.errors import FedrecError
from recsys_core.federated.cohort_state import COHORT_STATES_FILE, CohortStates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.manifest import MANIFEST_FILE, read_manifest
from recsys_core.federated.state import DeviceState
from recsys_core.federated.state_file import read_generations, write_generation
from server.run_directory import NothingToResumeError, RunDirectory
from server.simulate import run_federated_simulation

ROUNDS = 4


def run_config(output: Path) -> FederatedConfig:
    """A run small enough to repeat many times, with local DP (seeded noise, so runs compare bit for bit)."""
    return FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": 16, "n_items": 40, "seed": 4}},
        "model": {"name": "neumf", "options": {"gmf_dim": 4, "mlp_layers": [8, 4]}},
        "local": {"epochs": 1, "learning_rate": 0.01, "optimizer": "adam"},
        "server": {"rounds": ROUNDS, "devices_per_round": 8, "min_devices": 2, "evaluate_every": 1,
                   "devices_per_evaluation": 8},
        "simulation": {"engine": "cohort", "batching": "off"},
        "privacy": {"local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 50.0,
                              "target_delta": 1e-3}, "noise_source": "run_seed"},
        "output_dir": str(output),
        "private": False,
    })


# -- byte flips ------------------------------------------------------------------------------------------------------

def _same(first: Any, second: Any) -> bool:
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        return bool(np.array_equal(np.asarray(first), np.asarray(second)))
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same(first[key], second[key]) for key in first)
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    if dataclasses.is_dataclass(first) and dataclasses.is_dataclass(second):
        return _same(vars(first), vars(second))
    return bool(first == second)


def _integrity(directory: RunDirectory) -> Any:
    result = RunDirectory(directory.path).verify_integrity(None)
    if not result["passed"]:
        raise FedrecError("record chain broken: " + result["problems"][0])
    return RunDirectory(directory.path).read_round_lines()


def _device_state_file(folder: Path) -> Path:
    """A device's own state file (the Flower engine's format), with an accountant, two generations."""
    path = folder / "device-0.npz"
    state = DeviceState({"user.weight": np.ones((1, 4), np.float32)}, {"m": np.zeros(4)},
                        {"format": 1, "accountant": "rdp", "history": [[1.0, 0.5, 12]]})
    write_generation(path, state, 1)
    write_generation(path, state, 2)
    return path


def flip_targets(directory: RunDirectory) -> dict[str, tuple[Path, Callable[[], Any]]]:
    path = directory.path
    checkpoint = directory.read_checkpoint()
    assert checkpoint is not None
    return {
        "bundle manifest.json": (path / "final-model" / "manifest.json", lambda: read_bundle(path / "final-model")),
        "bundle parameters.npz": (path / "final-model" / "parameters.npz", lambda: read_bundle(path / "final-model")),
        "checkpoint latest.json": (path / "checkpoint" / "latest.json", directory.read_checkpoint),
        "checkpoint arrays": (path / "checkpoint" / f"round-{checkpoint.completed_round}.npz",
                              directory.read_checkpoint),
        "rounds.jsonl": (directory.rounds_file, lambda: _integrity(directory)),
        "cohort device states": (directory.devices / COHORT_STATES_FILE,
                                 lambda: CohortStates.load(directory.devices / COHORT_STATES_FILE, ROUNDS).states),
        "a device's state file": (_device_state_file(path / "flower-device"),
                                  lambda: read_generations(path / "flower-device" / "device-0.npz")),
        "federation.json": (path / MANIFEST_FILE, lambda: read_manifest(path / MANIFEST_FILE)),
    }


def flips(count: int, seed: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        directory, _ = run_federated_simulation(run_config(Path(folder)), run_dir=str(Path(folder) / "run"))
        rows = []
        for name, (path, read) in flip_targets(directory).items():
            expected = read()
            original = path.read_bytes()
            positions = np.random.default_rng(seed).choice(len(original), size=min(count, len(original)),
                                                           replace=False)
            outcomes: Counter[str] = Counter()
            raw: Counter[str] = Counter()
            for position in positions:
                damaged = bytearray(original)
                damaged[position] ^= 0xFF
                path.write_bytes(bytes(damaged))
                try:
                    loaded = read()
                except FedrecError:
                    outcomes["clear error"] += 1
                except Exception as error:  # what the project must never show a user
                    outcomes["raw exception"] += 1
                    raw[type(error).__name__] += 1
                else:
                    outcomes["no effect" if _same(loaded, expected) else "undetected change"] += 1
            path.write_bytes(original)
            rows.append({"file": name, "bytes": len(original), "flips": len(positions), **outcomes,
                         "raw_types": dict(raw)})
            print(json.dumps(rows[-1]), flush=True)
        return rows


# -- random SIGKILLs -------------------------------------------------------------------------------------------------

def _final_model(directory: RunDirectory) -> dict[str, np.ndarray]:
    with np.load(directory.path / "final-model" / "parameters.npz") as stored:
        return {name: stored[name] for name in stored.files}


def _attempt(output: Path, resume: bool, kill_after: float | None) -> bool:
    """Runs (or resumes) the run in a child process, SIGKILLed after ``kill_after`` seconds; True if it finished."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            run_federated_simulation(run_config(output), run_dir=str(output / "run"), resume=resume)
            code = 0
        except NothingToResumeError:
            code = 0
        finally:
            os._exit(code)
    deadline = None if kill_after is None else time.monotonic() + kill_after
    while True:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                raise RuntimeError(f"the run failed on its own (status {status}): see {output / 'run'}")
            return True
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.005)


def _timeless(directory: RunDirectory) -> list[Any]:
    return [dataclasses.replace(record, seconds=0.0, chain=None) for record in directory.read_rounds()]


def kills(trials: int, seed: int) -> list[dict[str, Any]]:
    generator = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        assert _attempt(Path(folder) / "whole", resume=False, kill_after=None)
        whole_seconds = time.monotonic() - started
        whole = RunDirectory(Path(folder) / "whole" / "run")
        for trial in range(trials):
            output = Path(folder) / f"trial-{trial}"
            killed, resume = 0, False
            # Each attempt dies somewhere in the first 90% of a whole run's time, until one finishes.
            while not _attempt(output, resume, float(generator.uniform(0.0, 0.9 * whole_seconds))
                               if killed < 30 else None):
                killed += 1
                resume = (output / "run" / "config.json").exists()
            directory = RunDirectory(output / "run")
            same_model = all(np.array_equal(a, b) for a, b in zip(_final_model(whole).values(),
                                                                    _final_model(directory).values()))
            seal = json.loads(directory.chain_file.read_text())["head"]
            integrity = directory.verify_integrity(seal)["passed"]
            ledger, _ = directory.read_ledger()
            assert ledger is not None
            checks = check_against_log(ledger, json.loads((directory.path / "config.json").read_text()),
                                       directory.read_rounds())
            # Seeded noise is flagged as not private by design; every other check must hold.
            ledger_ok = all(check.passed for check in checks if check.name != "DP noise from OS entropy")
            spend_ok = check_device_accountants(ledger, directory.device_accountants() or {}).passed
            rows.append({"trial": trial, "kills": killed, "same_model": same_model,
                         "same_records": _timeless(directory) == _timeless(whole), "integrity": integrity,
                         "ledger_checks": ledger_ok, "device_spend_within_ledger": spend_ok})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["flips", "kills"], required=True)
    parser.add_argument("--flips", type=int, default=300, help="flips per file")
    parser.add_argument("--trials", type=int, default=20, help="runs killed at random moments until they finish")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.part == "flips":
        rows = flips(args.flips, args.seed)
        print("\n| file | bytes | flips | clear error | no effect | undetected change | raw exception |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['file']} | {row['bytes']} | {row['flips']} | {row.get('clear error', 0)} | "
                  f"{row.get('no effect', 0)} | {row.get('undetected change', 0)} | {row.get('raw exception', 0)} |")
    else:
        rows = kills(args.trials, args.seed)
        total = sum(row["kills"] for row in rows)
        good = sum(all(row[key] for key in ("same_model", "same_records", "integrity", "ledger_checks",
                                            "device_spend_within_ledger")) for row in rows)
        print(f"\n{len(rows)} runs, {total} SIGKILLs at random moments (1 to {max(r['kills'] for r in rows)} per run); "
              f"{good} of {len(rows)} resumed to the uninterrupted model and records, chain intact, ledger and "
              "device spend verified")


if __name__ == "__main__":
    main()
