"""End to end on Flower's real simulation engine, kept small enough for CI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from recsys_core.errors import FedrecError
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.manifest import MANIFEST_FILE, read_manifest
from recsys_core.federated.records import RoundRecord
from server.cli import main
from server.round_loop import RunStoppedError
from server.rounds import FederatedRun
from server.run_directory import RunDirectory
from server.server_app import prepare_run_directory
from server.simulate import (
    backend_config,
    keep_ray_on_loopback,
    load_client_app,
    provision_federation,
    run_federated_simulation,
    validate_before_start,
)

N_USERS = 12


def tiny_config(tmp_path: Path, rounds: int) -> FederatedConfig:
    return FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": N_USERS, "n_items": 40, "seed": 2}},
        "model": {"name": "neumf", "options": {"gmf_dim": 4, "mlp_layers": [8, 4]}},
        "local": {"epochs": 1, "learning_rate": 0.01},
        "server": {"rounds": rounds, "devices_per_round": 6, "min_devices": 3, "evaluate_every": 2,
                   "devices_per_evaluation": 6, "server_learning_rate": 2.0},
        "simulation": {"failing_partitions": [3]},
        "output_dir": str(tmp_path),
        # Plain runs test the engine; each private mode is asked for where a test needs it.
        "private": False,
    })


class RecordingGrid:
    """Passes everything to the real grid and keeps every message in both directions."""

    def __init__(self, grid) -> None:
        self.grid = grid
        self.sent: list = []
        self.received: list = []

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.sent += messages
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received += replies
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


def run_recorded(config: FederatedConfig) -> tuple[RunDirectory, RecordingGrid, dict]:
    """Runs ``config`` on the simulation engine and records every message the server sends and receives."""
    directory = prepare_run_directory(config, None, resume=False)
    provision_federation(config, directory, load_federated_data(config.data, config.partition))
    manifest = read_manifest(directory.path / MANIFEST_FILE)
    recorders: list[RecordingGrid] = []
    summary: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def _(grid, context) -> None:
        recorders.append(RecordingGrid(grid))
        summary.update(FederatedRun(config, directory, manifest).run(recorders[0]))

    keep_ray_on_loopback()
    run_simulation(server_app=server_app, client_app=load_client_app(), num_supernodes=N_USERS,
                   backend_config=backend_config(config))
    return directory, recorders[0], summary


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("recorded"), rounds=4).validate()
    return (config, *run_recorded(config))


def private_rows(directory: RunDirectory) -> list[np.ndarray]:
    rows = []
    for path in directory.devices.glob("device-*.npz"):
        with np.load(path) as stored:
            rows += [stored[name][0] for name in stored.files if name.startswith("private/")]
    return rows


def test_run_directory_holds_records_plots_and_model(recorded_run) -> None:
    _, directory, _, summary = recorded_run
    rounds = directory.read_rounds()
    assert [record.round for record in rounds] == [1, 2, 3, 4]
    assert all(record.bytes_up > 0 and record.bytes_down > 0 and record.seconds > 0 for record in rounds)
    assert "full/ndcg@10" in (rounds[1].validation or {})
    assert (directory.path / "metrics.png").stat().st_size > 0
    assert (directory.path / "final-model" / "manifest.json").exists()
    assert summary["test"]["full/ndcg@10"] >= 0
    assert json.loads((directory.path / "config.json").read_text())["server"]["rounds"] == 4


def test_a_failing_client_is_counted_and_the_round_proceeds(recorded_run) -> None:
    _, directory, _, summary = recorded_run
    rounds = directory.read_rounds()
    failed = [record for record in rounds if record.failures]
    assert failed, "partition 3 was never sampled; pick another seed"
    for record in failed:
        assert record.failures[0].partition == 3
        assert "configured to fail" in record.failures[0].reason
        assert record.participants == record.sampled - 1
        assert record.status == "aggregated"
    # The summary counts failures by kind, numbers aside.
    assert summary["failures_by_reason"] == {
        "partition N is configured to fail (simulation.failing_partitions)": len(failed)}


def test_private_parameters_never_leave_the_device(recorded_run) -> None:
    _, directory, recorder, _ = recorded_run
    rows = private_rows(directory)
    assert rows, "devices stored no private parameters"
    outgoing = [reply for reply in recorder.received if not reply.has_error()]
    assert outgoing
    for message in recorder.sent + outgoing:
        for record in message.content.array_records.values():
            for name, array in record.items():
                assert "user_embedding" not in name
                values = array.numpy()
                if values.ndim == 2:
                    for row in rows:
                        if values.shape[1] == row.shape[0]:
                            assert not (values == row).all(axis=1).any(), f"a private row travelled in {name}"


def test_secure_aggregation_gives_the_plain_result_and_the_server_sees_no_update(recorded_run, tmp_path) -> None:
    _, plain_directory, _, plain_summary = recorded_run
    values = json.loads(tiny_config(tmp_path, rounds=4).to_json())
    values["secure_aggregation"] = {"enabled": True}
    directory, recorder, summary = run_recorded(FederatedConfig.from_dict(values).validate())
    plain_rounds, rounds = plain_directory.read_rounds(), directory.read_rounds()
    # The same devices fail (partition 3 raises) and the rest are summed: the same model up to quantisation.
    def failed(records: list[RoundRecord]) -> list[list]:
        return [[(f.partition, f.reason) for f in record.failures] for record in records]

    assert failed(rounds) == failed(plain_rounds) and any(failed(rounds))
    assert [r.train_loss for r in rounds] == pytest.approx([r.train_loss for r in plain_rounds], abs=1e-6)
    assert summary["test"] == pytest.approx(plain_summary["test"], abs=1e-6)
    assert rounds[1].validation == pytest.approx(plain_rounds[1].validation, abs=1e-6)
    replies = [reply for reply in recorder.received if not reply.has_error()]
    assert replies
    # Each device registered an endorsed key, and every neighbour key the server relayed came with its endorsement.
    registrations = [r.content["config"] for r in replies if "public-key" in r.content.config_records.get("config", {})]
    assert len(registrations) == N_USERS and all(len(r["identity-certificate"]) == 64 for r in registrations)
    masking = [m for m in recorder.sent if "secure-aggregation" in m.content.array_records]
    assert masking and all("neighbour-key-signatures" in m.content["secure-aggregation"]
                           for m in masking if m.metadata.message_type == "train")
    for reply in replies:
        # Counts, losses and metric sums travel only inside the masked vector.
        metrics = reply.content.metric_records.get("metrics", {})
        assert set(metrics) <= {"partition-id", "declined"}, sorted(metrics)
        for record in reply.content.array_records.values():
            for name, array in record.items():
                assert not np.issubdtype(array.numpy().dtype, np.floating), f"{name} left a device as floats"


def test_resume_ends_where_an_uninterrupted_run_ends(recorded_run, tmp_path: Path) -> None:
    _, uninterrupted, _, summary = recorded_run
    interrupted, _ = run_federated_simulation(tiny_config(tmp_path, rounds=2))
    resumed, resumed_summary = run_federated_simulation(tiny_config(tmp_path, rounds=4),
                                                        run_dir=str(interrupted.path), resume=True)
    with np.load(uninterrupted.path / "final-model" / "parameters.npz") as expected, \
            np.load(resumed.path / "final-model" / "parameters.npz") as measured:
        for name in expected.files:
            np.testing.assert_array_equal(expected[name], measured[name])
    assert resumed_summary["test"] == summary["test"]
    assert [r.round for r in resumed.read_rounds()] == [1, 2, 3, 4]


def test_resuming_a_finished_run_says_so_before_ray_starts(recorded_run, capsys) -> None:
    _, directory, _, _ = recorded_run
    before = {path: path.read_bytes() for path in sorted(directory.path.rglob("*")) if path.is_file()}
    assert main(["simulate", "--resume", str(directory.path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "this run is complete (4 rounds); nothing to do — raise server.rounds with --set to continue" in out
    assert "starting Ray workers" not in out
    assert {path: path.read_bytes() for path in sorted(directory.path.rglob("*")) if path.is_file()} == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rounds", "0"], "server.rounds"),
        (["--devices-per-round", "999"], "only 500 devices"),
        (["--model", "transformer9000"], "unknown model"),
        (["--dataset", "ml-7k"], "ml-7k"),
        (["--set", "server.round=3"], "server.round"),
        # Audit canaries: one per distinct user, and a count that is a count.
        (["--audit-canaries", "501"], "data.canaries.count: 501 canaries need as many distinct users"),
        (["--audit-canaries", "-3"], "data.canaries.count: must be a non-negative integer"),
        # Bad privacy settings: one error naming the key, before any training.
        (["--set", "privacy.user_level.enabled=true", "--set", "privacy.user_level.noise_multiplier=0"],
         "privacy.user_level.noise_multiplier"),
        (["--set", "privacy.user_level.enabled=true", "--set", "privacy.user_level.target_delta=0.01"],
         "below 1 / (number of users) = 1/500"),
        (["--set", "privacy.local.enabled=true", "--set", "privacy.local.target_delta=0.5"],
         "privacy.local.target_delta: must be below 1 / (the fewest training examples on a device)"),
        (["--set", "privacy.local.enabled=true", "--set", "privacy.local.target_epsilon=0"],
         "privacy.local.target_epsilon"),
        (["--model", "popularity", "--set", "privacy.local.enabled=true"], "model 'popularity' is fitted by counting"),
        # Bad secure-aggregation settings.
        (["--set", "secure_aggregation.enabled=true", "--set", "server.strategy=fedyogi"],
         "secure_aggregation: the server sees only the sum"),
        (["--set", "secure_aggregation.enabled=true", "--set", "privacy.user_level.enabled=true"],
         "noise_placement = 'distributed'"),
        (["--set", "secure_aggregation.enabled=true", "--set", "secure_aggregation.dropout_tolerance=0.7"],
         "secure_aggregation.dropout_tolerance"),
        (["--set", "secure_aggregation.enabled=true", "--set", "secure_aggregation.update_clip_range=0"],
         "secure_aggregation.update_clip_range"),
    ],
)
def test_invalid_config_fails_before_ray_starts(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    # NeuMF's defaults: without --model, fedrec simulate runs the private item k-NN main job.
    code = main(["simulate", "--output-dir", str(tmp_path), "--model", "neumf", "--not-private", *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_validation_counts_clients(tmp_path: Path) -> None:
    assert validate_before_start(tiny_config(tmp_path, rounds=1)).num_devices == N_USERS


def test_devices_out_of_privacy_budget_decline_and_are_counted(tmp_path: Path) -> None:
    values = json.loads(tiny_config(tmp_path, rounds=2).to_json())
    values["simulation"]["failing_partitions"] = []
    # A budget far below what one round of DP-SGD spends: every sampled device declines.
    values["privacy"] = {"local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 0.01,
                                   "target_delta": 1e-3}}
    values["server"]["evaluate_every"] = 0
    progress: list[tuple[str, int, int]] = []
    phases: list[str] = []
    config = FederatedConfig.from_dict(values)
    # No round aggregated anything: the run fails rather than print a table for the untrained model.
    with pytest.raises(FedrecError, match="no round aggregated an update, so the model is the untrained initial"):
        run_federated_simulation(config, on_device=lambda *call: progress.append(call), on_phase=phases.append)
    (run,) = Path(config.output_dir).iterdir()
    directory = RunDirectory(run)
    # Flower's engine reports each exchange as it starts and ends, for the progress display,
    # and names the start-up phases before the first exchange.
    assert progress == [("train", 0, 6), ("train", 6, 6)] * 2 + [("test", 0, N_USERS), ("test", N_USERS, N_USERS)]
    assert phases[0] == "reading the data"
    assert phases[1].startswith("starting Ray: ") and f"for {N_USERS:,} devices" in phases[1] and len(phases) == 2
    for record in directory.read_rounds():
        assert record.declined and len(record.declined) == record.sampled
        assert record.participants == 0 and not record.failures
        assert record.status == "skipped"


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure-aggregation"])
def test_private_run_writes_a_ledger_that_recomputes(tmp_path: Path, secure: bool) -> None:
    from recsys_core.privacy.ledger import load_ledger, verify

    values = json.loads(tiny_config(tmp_path, rounds=3).to_json())
    # With secure aggregation the distributed noise shares are added inside the masked sum.
    values["secure_aggregation"] = {"enabled": secure}
    values["server"].update({"evaluate_every": 0, "min_devices": 1})
    values["privacy"] = {
        "local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 50.0, "target_delta": 1e-3},
        # Shares sized for 6 survivors of 6: a round where partition 3 fails (configured above) is discarded.
        "user_level": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 0.1, "target_delta": 1e-2,
                       "noise_placement": "distributed", "min_surviving_devices": 6},
    }
    config = FederatedConfig.from_dict(values)
    directory, recorder, summary = run_recorded(config)
    # Under secure aggregation a device's epsilon stays home (its accountant history, which the ledger needs
    # and the threat model lists, is what travels); in a plain run it is reported beside the update.
    reported = [reply for reply in recorder.received if not reply.has_error()
                and "privacy-epsilon" in reply.content.metric_records.get("metrics", {})]
    assert bool(reported) is not secure
    rounds = directory.read_rounds()
    ledger = verify(load_ledger(directory.path / "privacy-ledger.json"))
    written = load_ledger(directory.path / "privacy-ledger.json")
    joined = {device.device_id: device.rounds_joined for device in written.devices}
    assert len(joined) == N_USERS
    assert sum(joined.values()) == sum(len(record.joined) for record in rounds) > 0
    # Every device that trained reported its accountant; its epsilon is positive, within its budget.
    trained = [device for device in written.devices if device.local_steps > 0]
    assert trained and all(0 < device.local_epsilon <= 50.0 for device in trained)
    assert ledger.user_level is not None and written.user_level is not None
    assert written.user_level.epsilon.claimed == "without_amplification"
    assert summary["privacy"]["user_level"]["claimed_epsilon"] == written.user_level.epsilon.claimed_epsilon
    for record in rounds:
        # Clipped updates carry neither counts nor losses.
        assert record.train_loss is None
        partition_3_failed = any(failure.partition == 3 for failure in record.failures)
        assert (record.status == "discarded") == partition_3_failed
        assert record.status == "aggregated" or partition_3_failed
    assert any(record.status == "aggregated" for record in rounds)


def test_the_private_main_job_runs_end_to_end_small(tmp_path: Path) -> None:
    """The main job's recipe on 12 devices: secure aggregation, distributed user-level DP, item k-NN in six rounds."""
    from recsys_core.federated.main_job import main_job_values
    from recsys_core.privacy.ledger import load_ledger, verify
    from server.simulate import POPULARITY_REFERENCE_FILE

    values = main_job_values("synthetic")
    values["data"]["synthetic"] = {"n_users": N_USERS, "n_items": 40, "seed": 2}
    values["server"].update({"devices_per_round": N_USERS, "devices_per_evaluation": N_USERS,
                             "server_learning_rate": float(N_USERS)})
    values["privacy"]["user_level"].update({"min_surviving_devices": 10, "target_delta": 1e-2})
    values["output_dir"] = str(tmp_path)
    directory, summary = run_federated_simulation(FederatedConfig.from_dict(values))
    rounds = directory.read_rounds()
    assert [record.status for record in rounds] == ["aggregated"] * 6
    assert all(record.participants == N_USERS for record in rounds)
    ledger = verify(load_ledger(directory.path / "privacy-ledger.json"))
    written = load_ledger(directory.path / "privacy-ledger.json").user_level
    assert ledger.user_level is not None and written is not None and written.epsilon.claimed_epsilon > 0
    assert summary["secure_aggregation"]["rounds_failed"] == 0
    # Every device was enrolled by the launcher's in-process authority, and checked its neighbours' keys against it.
    authority = json.loads((directory.path / "federation.json").read_text())["device_authority"]
    assert summary["secure_aggregation"]["device_keys"] == f"certified by device authority {authority}"
    assert len(list((directory.devices / "identities").glob("partition-*.identity"))) == N_USERS
    # Popularity on the same test users sits beside the model, in the summary and in its own file.
    assert set(summary["test"]) <= set(summary["popularity_test"])
    assert json.loads((directory.path / POPULARITY_REFERENCE_FILE).read_text())["test"] == summary["popularity_test"]
    # The released counts are the users' unit-norm count vectors summed, plus noise of sigma = 1.426 per coordinate
    # from shares sized for 10 survivors, 12 of which took part: std 1.426 * sqrt(12 / 10) = 1.56.
    with np.load(directory.path / "final-model" / "parameters.npz") as final:
        counts = final["item_counts"]
    data = load_federated_data(FederatedConfig.from_dict(values).data, FederatedConfig.from_dict(values).partition)
    from recsys_core.models import CatalogInfo, build_model

    exact = build_model("item_knn", CatalogInfo.from_log(data.split.train))
    exact.fit_statistics_round(data.split.train, 1)
    residual = counts - exact.item_counts.numpy()
    assert 1.1 < float(np.std(residual)) < 2.1


@pytest.mark.parametrize("engine", ["flower", "cohort"])
def test_a_step_that_would_publish_a_non_finite_model_stops_the_run_with_its_record_kept(tmp_path: Path,
                                                                                        engine: str) -> None:
    values = json.loads(tiny_config(tmp_path, rounds=3).to_json())
    # A server learning rate no honest update survives: the first step overflows float32.
    values["server"].update({"server_learning_rate": 1e300, "evaluate_every": 0})
    values["simulation"]["engine"] = engine
    run_dir = tmp_path / "run"
    with pytest.raises(RunStoppedError, match=r"round 1: the server step gave NaN or infinite values in .*The run "
                                              r"stops here; checkpoint/ holds the last finite model"):
        run_federated_simulation(FederatedConfig.from_dict(values), run_dir=str(run_dir))
    directory = RunDirectory(run_dir)
    [record] = directory.read_rounds()
    assert record.status == "failed" and "NaN or infinite" in record.status_reason
    checkpoint = directory.read_checkpoint()
    assert checkpoint is not None and checkpoint.completed_round == 1
    assert all(np.all(np.isfinite(value)) for value in checkpoint.shared_parameters.values())
    assert not (run_dir / "final-model").exists() and not (run_dir / "summary.json").exists()


def test_a_run_whose_every_device_fails_the_same_way_stops_after_three_rounds_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_core.federated import cohort

    values = json.loads(tiny_config(tmp_path, rounds=5).to_json())
    values["simulation"].update({"engine": "cohort", "failing_partitions": []})
    values["server"]["evaluate_every"] = 0
    config = FederatedConfig.from_dict(values)
    run_dir = tmp_path / "run"
    working = cohort.train_on_device

    def broken(*args, **kwargs):
        raise TypeError(f"Invalid arguments for Array (partition {args[-1]})")

    monkeypatch.setattr(cohort, "train_on_device", broken)
    with pytest.raises(RunStoppedError, match=r"every sampled device failed in rounds 1-3 with the same error: "
                                              r"TypeError: Invalid arguments for Array .*--resume"):
        run_federated_simulation(config, run_dir=str(run_dir))
    assert [record.participants for record in RunDirectory(run_dir).read_rounds()] == [0, 0, 0]
    # Once the cause is fixed the run goes on from where it stopped.
    monkeypatch.setattr(cohort, "train_on_device", working)
    directory, _ = run_federated_simulation(config, run_dir=str(run_dir), resume=True)
    assert [record.participants > 0 for record in directory.read_rounds()] == [False, False, False, True, True]


def test_only_one_error_on_every_device_counts_as_a_repeated_failure() -> None:
    from recsys_core.federated.records import DeviceFailure
    from server.round_loop import common_failure
    from server.secure_aggregation import NO_REPLY

    config = FederatedConfig.from_dict({"private": False})

    def record(*reasons: str, sampled: int = 2, participants: int = 0) -> RoundRecord:
        return RoundRecord(round=1, sampled=sampled, secure_aggregation=False, status="aggregated",
                           participants=participants,
                           failures=tuple(DeviceFailure(p, reason) for p, reason in enumerate(reasons)))

    assert common_failure(config, record("ValueError: row 3", "ValueError: row 12")) == "ValueError: row N"
    assert common_failure(config, record("ValueError: row 3", "KeyError: 'x'")) is None
    assert common_failure(config, record("ValueError: row 3", sampled=2, participants=1)) is None
    assert common_failure(config, record(NO_REPLY, NO_REPLY)) is None  # an outage, not a bug
    faulty = FederatedConfig.from_dict({"private": False, "simulation": {"failure_probability": 0.5}})
    assert common_failure(faulty, record("ValueError: row 3", "ValueError: row 12")) is None


def test_a_simulation_whose_final_test_gets_no_metrics_fails_instead_of_printing_an_empty_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys_core.errors import FedrecError
    from recsys_core.federated import cohort

    values = json.loads(tiny_config(tmp_path, rounds=1).to_json())
    values["simulation"].update({"engine": "cohort", "batching": "off"})
    values["server"]["evaluate_every"] = 0

    def unable(*args, **kwargs):
        raise ValueError("no item to rank")

    monkeypatch.setattr(cohort, "evaluate_on_device", unable)
    with pytest.raises(FedrecError, match=r"the run ended without test metrics .* devices failed the test"):
        run_federated_simulation(FederatedConfig.from_dict(values), run_dir=str(tmp_path / "run"))


def test_failing_devices_print_no_tracebacks_and_a_run_that_aggregated_nothing_fails(tmp_path: Path, capfd) -> None:
    # Every device raises: Flower would log each error with its traceback (24 of them, ~1,900 lines).
    config = tmp_path / "failing.toml"
    config.write_text(f"""private = false
output_dir = "{tmp_path / 'runs'}"
[data.synthetic]
n_users = {N_USERS}
n_items = 40
seed = 2
[model]
name = "neumf"
[model.options]
gmf_dim = 4
mlp_layers = [8, 4]
[server]
rounds = 2
devices_per_round = 6
min_devices = 3
evaluate_every = 0
[simulation]
failing_partitions = {list(range(N_USERS))}
""")
    assert main(["simulate", "--config", str(config)]) == 2
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "no round aggregated an update, so the model is the untrained initial one" in " ".join(captured.err.split())
    assert "0/6 devices (6 failed)" in captured.out
