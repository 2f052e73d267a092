"""The cohort engine against Flower's: the same seeded run, the same model and records; its own resume and audit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from recsys_core.audit.formal import DEVICE_ACCOUNTANTS_CHECK
from recsys_core.errors import ConfigError
from recsys_core.federated.cohort_state import CohortStates, CohortStoreError, previous_generation
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.records import RoundRecord
from recsys_core.privacy.accountant import PrivacyAccountant
from server.audit import AuditOptions, audit_run
from server.cohort_engine import COHORT_STATES_FILE
from server.simulate import run_federated_simulation

N_USERS = 12


def config_for(tmp_path: Path, engine: str, rounds: int = 4, **sections: dict) -> FederatedConfig:
    values: dict = {
        "data": {"synthetic": {"n_users": N_USERS, "n_items": 40, "seed": 2}},
        # NeuMF keeps a private user embedding and its optimiser state on each device.
        "model": {"name": "neumf", "options": {"gmf_dim": 4, "mlp_layers": [8, 4]}},
        "local": {"epochs": 1, "learning_rate": 0.01, "optimizer": "adam"},
        "server": {"rounds": rounds, "devices_per_round": 6, "min_devices": 3, "evaluate_every": 2,
                   "devices_per_evaluation": 6, "server_learning_rate": 2.0},
        "simulation": {"failing_partitions": [3], "engine": engine},
        "output_dir": str(tmp_path / engine),
        "private": False,
    }
    values.update(sections)
    return FederatedConfig.from_dict(values)


def final_model(directory) -> dict[str, np.ndarray]:
    with np.load(directory.path / "final-model" / "parameters.npz") as stored:
        return {name: stored[name] for name in stored.files}


def comparable(record: RoundRecord) -> RoundRecord:
    """A round record without what depends on the transport: time, bytes, the chain, error text."""
    failures = tuple((failure.partition, "configured to fail" in failure.reason) for failure in record.failures)
    return dataclasses.replace(record, seconds=0.0, bytes_up=0, bytes_down=0, chain=None,
                               failures=failures)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("engines")
    return {engine: run_federated_simulation(config_for(tmp_path, engine)) for engine in ("flower", "cohort")}


def test_the_cohort_engine_gives_the_flower_engines_model_and_records(both_engines) -> None:
    (flower, flower_summary), (cohort, cohort_summary) = both_engines["flower"], both_engines["cohort"]
    expected, measured = final_model(flower), final_model(cohort)
    assert expected.keys() == measured.keys()
    for name in expected:
        np.testing.assert_array_equal(expected[name], measured[name], err_msg=name)
    assert cohort_summary["test"] == flower_summary["test"]
    flower_rounds, cohort_rounds = flower.read_rounds(), cohort.read_rounds()
    assert [comparable(r) for r in cohort_rounds] == [comparable(r) for r in flower_rounds]
    # Partition 3 raises on every call: recorded as a failure with its traceback, and the round goes on.
    failed = [record for record in cohort_rounds if record.failures]
    assert failed and all(record.status == "aggregated" for record in failed)
    assert "SimulatedDeviceError" in failed[0].failures[0].detail
    assert all(record.bytes_up > 0 and record.bytes_down > 0 for record in cohort_rounds)


def test_a_cohort_run_keeps_the_run_directory_and_passes_its_audit(both_engines) -> None:
    cohort, summary = both_engines["cohort"]
    for name in ("config.json", "federation.json", "rounds.jsonl", "record-chain.json", "summary.json",
                 "metrics.png", f"devices/{COHORT_STATES_FILE}"):
        assert (cohort.path / name).exists(), name
    result = audit_run(cohort.path, AuditOptions(expected_head=summary["record_chain_head"], item_set_devices=6))
    assert result["integrity"]["passed"] and result["integrity"]["rounds"] == 4


def test_a_resumed_cohort_run_ends_where_an_uninterrupted_one_ends(both_engines, tmp_path: Path) -> None:
    uninterrupted, summary = both_engines["cohort"]
    interrupted, _ = run_federated_simulation(config_for(tmp_path, "cohort", rounds=2))
    resumed, resumed_summary = run_federated_simulation(config_for(tmp_path, "cohort", rounds=4),
                                                        run_dir=str(interrupted.path), resume=True)
    expected, measured = final_model(uninterrupted), final_model(resumed)
    for name in expected:
        np.testing.assert_array_equal(expected[name], measured[name], err_msg=name)
    # The private user embeddings came back from the store: the test ranks with them.
    assert resumed_summary["test"] == summary["test"]


def test_resume_takes_the_device_states_of_the_checkpoints_round(tmp_path: Path) -> None:
    interrupted, _ = run_federated_simulation(config_for(tmp_path, "cohort", rounds=2))
    store = interrupted.devices / COHORT_STATES_FILE
    # A kill after round 3's device states were written, before its checkpoint: the store holds rounds 3 and 2.
    CohortStates().save(store, 3)
    resumed, _ = run_federated_simulation(config_for(tmp_path, "cohort", rounds=3), run_dir=str(interrupted.path),
                                          resume=True)
    uninterrupted, _ = run_federated_simulation(config_for(tmp_path / "whole", "cohort", rounds=3))
    expected, measured = final_model(uninterrupted), final_model(resumed)
    for name in expected:  # round 3 trained on round 2's states, not the empty generation tagged 3
        np.testing.assert_array_equal(expected[name], measured[name], err_msg=name)
    # With no generation of the checkpoint's round left, resuming would reset every device's accountant and
    # embedding: refused, naming the file.
    CohortStates().save(store, 4)
    previous_generation(store).unlink()
    with pytest.raises(CohortStoreError, match=r"no device states for round 3 \(found rounds \[4\]\)"):
        run_federated_simulation(config_for(tmp_path, "cohort", rounds=4), run_dir=str(resumed.path), resume=True)


def test_the_cohort_engine_refuses_secure_aggregation_naming_the_option(tmp_path: Path) -> None:
    config = config_for(tmp_path, "cohort", secure_aggregation={"enabled": True})
    with pytest.raises(ConfigError, match="simulation.engine = 'cohort' does not simulate secure aggregation"):
        config.validate()


def test_a_local_dp_cohort_run_keeps_every_accountant_and_its_ledger_verifies(tmp_path: Path) -> None:
    config = config_for(tmp_path, "cohort", rounds=3, privacy={
        "local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 50.0, "target_delta": 1e-3}})
    directory, summary = run_federated_simulation(config)
    ledger = json.loads(directory.ledger_file.read_text())
    joined = {partition for record in directory.read_rounds() for partition in record.joined}
    assert {int(device["device_id"]) for device in ledger["devices"] if device["rounds_joined"]} == joined
    # Each device's accountant survived between rounds in the cohort's store: its steps add up over its rounds.
    assert all(device["local_steps"] >= device["rounds_joined"] > 0 for device in ledger["devices"]
               if device["rounds_joined"])
    result = audit_run(directory.path, AuditOptions(expected_head=summary["record_chain_head"], item_set_devices=6))
    assert all(check["passed"] for check in result["formal"]["checks"]), result["formal"]["checks"]
    assert DEVICE_ACCOUNTANTS_CHECK in {check["name"] for check in result["formal"]["checks"]}


def test_the_audit_fails_a_device_that_spent_more_than_the_ledger_records(tmp_path: Path) -> None:
    config = config_for(tmp_path, "cohort", rounds=2, privacy={
        "local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 50.0, "target_delta": 1e-3}})
    directory, summary = run_federated_simulation(config)
    # A device took DP steps whose round the server then lost: its own accountant holds more than it reported.
    store = directory.devices / COHORT_STATES_FILE
    states = CohortStates.load(store, 2)
    partition = min(states.states)
    device = states.get(partition)
    assert device is not None and device.privacy_accountant is not None
    accountant = PrivacyAccountant.from_dict(device.privacy_accountant)
    accountant.record(1.0, 1.0, steps=accountant.total_steps)
    states.put(partition, dataclasses.replace(device, privacy_accountant=accountant.to_dict()))
    states.save(store, 2)
    result = audit_run(directory.path, AuditOptions(expected_head=summary["record_chain_head"], item_set_devices=6))
    failed = [check for check in result["formal"]["checks"] if not check["passed"]]
    assert [check["name"] for check in failed] == [DEVICE_ACCOUNTANTS_CHECK]
    assert f"device {partition}: its accountant has spent epsilon" in failed[0]["detail"]
    assert result["verdict"]["result"] == "FAIL"


@pytest.mark.parametrize("privacy", [
    {"local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 50.0, "target_delta": 1e-3}},
    {"user_level": {"enabled": True, "noise_multiplier": 0.5, "clip_norm": 0.5, "target_delta": 1e-2}},
], ids=["local", "user_level"])
def test_a_replayable_dp_run_gives_the_same_model_and_ledger_on_both_engines(tmp_path: Path, privacy: dict) -> None:
    privacy = {**privacy, "noise_source": "run_seed"}
    runs = {engine: run_federated_simulation(config_for(tmp_path, engine, rounds=3, privacy=privacy))
            for engine in ("flower", "cohort")}
    (flower, flower_summary), (cohort, cohort_summary) = runs["flower"], runs["cohort"]
    expected, measured = final_model(flower), final_model(cohort)
    for name in expected:
        np.testing.assert_array_equal(expected[name], measured[name], err_msg=name)
    flower_ledger, cohort_ledger = (json.loads(run.ledger_file.read_text()) for run in (flower, cohort))
    assert cohort_ledger["devices"] == flower_ledger["devices"]
    assert cohort_summary["privacy"] == flower_summary["privacy"]
    # Noise a reader can regenerate from the public seed is no guarantee: every output says so, the audit fails it.
    assert "NOT private" in cohort_summary["privacy"]["not_private"]
    result = audit_run(cohort.path, AuditOptions(expected_head=cohort_summary["record_chain_head"],
                                                 item_set_devices=6))
    failed = [check["name"] for check in result["formal"]["checks"] if not check["passed"]]
    assert failed == ["DP noise from OS entropy"] and result["verdict"]["result"] == "FAIL"


def test_dp_noise_comes_from_os_entropy_by_default(tmp_path: Path) -> None:
    privacy = {"user_level": {"enabled": True, "noise_multiplier": 0.5, "clip_norm": 0.5, "target_delta": 1e-2}}
    first, second = (run_federated_simulation(config_for(tmp_path / str(i), "cohort", rounds=1, privacy=privacy))
                     for i in range(2))
    assert any(not np.array_equal(final_model(first[0])[name], final_model(second[0])[name])
               for name in final_model(first[0]))
    assert "not_private" not in first[1]["privacy"]


def test_a_user_level_round_summed_in_chunks_gives_the_flower_engines_model(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 2 of the round's 6 devices: only a chunk's updates are held, and the sum is the same, bit for bit.
    import server.cohort_engine

    monkeypatch.setattr(server.cohort_engine, "STREAM_CHUNK", 2)
    privacy = {"user_level": {"enabled": True, "noise_multiplier": 0.5, "clip_norm": 0.5, "target_delta": 1e-2},
               "noise_source": "run_seed"}
    flower, _ = run_federated_simulation(config_for(tmp_path, "flower", rounds=2, privacy=privacy))
    chunked, _ = run_federated_simulation(config_for(tmp_path, "cohort", rounds=2, privacy=privacy))
    expected, measured = final_model(flower), final_model(chunked)
    for name in expected:
        np.testing.assert_array_equal(expected[name], measured[name], err_msg=name)
    assert [r.participants for r in chunked.read_rounds()] == [r.participants for r in flower.read_rounds()]
