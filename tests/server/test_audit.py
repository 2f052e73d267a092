"""``fedrec audit`` on a real simulated DP run: it passes untouched, and edits to the record are caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recsys_core.federated.config import FederatedConfig
from server.audit import AuditOptions, audit_run
from server.cli import main
from server.simulate import run_federated_simulation

N_USERS = 16


@pytest.fixture(scope="module")
def private_run(tmp_path_factory) -> Path:
    """Six rounds of user-level DP-FedAvg (central noise) and local DP-SGD, with 12 canaries."""
    config = FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": N_USERS, "n_items": 40, "seed": 2}, "canaries": {"count": 12}},
        "model": {"name": "neumf", "options": {"gmf_dim": 4, "mlp_layers": [8, 4]}},
        "local": {"epochs": 1, "learning_rate": 0.01},
        "server": {"rounds": 4, "devices_per_round": 8, "min_devices": 2, "evaluate_every": 0,
                   "final_evaluation": False, "server_learning_rate": 2.0},
        "privacy": {"local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 50.0,
                              "target_delta": 1e-3},
                    "user_level": {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 0.1,
                                   "target_delta": 1e-2}},
        "output_dir": str(tmp_path_factory.mktemp("audited")),
    })
    directory, summary = run_federated_simulation(config)
    (directory.path / "head.txt").write_text(summary["record_chain_head"])
    return directory.path


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("devices", "audit*")))


def test_an_untouched_dp_run_passes_with_every_part_reported(private_run: Path, tmp_path: Path) -> None:
    run = copy_of(private_run, tmp_path)
    phases: list[str] = []
    result = audit_run(run, AuditOptions(expected_head=(run / "head.txt").read_text(), item_set_devices=8),
                       on_phase=phases.append)
    assert result["verdict"] == {"result": "PASS", "reasons": [], "note": None}
    # Progress: each phase, and each replayed device of both attacks, counted out of its total.
    assert phases[:3] == ["integrity: checking the record chain",
                          "formal checks: recomputing epsilon with two accountants",
                          "reading the data and the released model"]
    assert phases[-1] == "writing audit.json, audit.md and audit.png"
    assert sum("canaries, server's view: replaying device" in phase for phase in phases) == 12
    assert [phase.split(" (")[0] for phase in phases if phase.startswith("item-set attack")] == \
        [f"item-set attack: replaying device {done} of 8" for done in range(1, 9)]
    assert result["integrity"]["passed"] and result["integrity"]["rounds"] == 4
    names = {check["name"] for check in result["formal"]["checks"]}
    assert {"recomputed by the run's accountant", "local epsilons by a second accountant",
            "user-level claimed epsilon by a second accountant", "central noise on, as measured by the server",
            "rounds joined per device", "no device past its budget", "secure aggregation as configured"} <= names
    assert all(check["passed"] for check in result["formal"]["checks"])
    canaries = result["canaries"]
    assert canaries["planted"] == 12
    for view in ("released_model", "server_view"):
        assert 0 <= canaries[view]["epsilon_lower_bound"] <= canaries[view]["claimed_epsilon"]
    # Local DP covers what the server sees of each device; central user-level noise does not.
    claims = result["formal"]["claims"]
    assert claims["server_view"]["claim"] == "local DP (worst device)"
    assert claims["released_model"]["epsilon"] <= claims["server_view"]["epsilon"]
    assert result["item_set"]["devices"] > 0 and result["item_set"]["server_view"] == "raw"
    report = (run / "audit.md").read_text()
    assert report.startswith("# Privacy audit: PASS") and "one user" in report
    assert (run / "audit.png").stat().st_size > 0 and json.loads((run / "audit.json").read_text()) == \
        json.loads(json.dumps(result))


def test_a_ledger_with_one_edited_sigma_fails(private_run: Path, tmp_path: Path, capsys) -> None:
    run = copy_of(private_run, tmp_path)
    ledger = json.loads((run / "privacy-ledger.json").read_text())
    ledger["user_level"]["epsilon"]["noise_multiplier"] = 2.0
    (run / "privacy-ledger.json").write_text(json.dumps(ledger, indent=2))
    assert main(["audit", str(run), "--item-set-devices", "4"]) == 1
    reasons = json.loads((run / "audit.json").read_text())["verdict"]["reasons"]
    assert any("privacy-ledger.json" in reason and "not the one sealed" in reason for reason in reasons)
    assert any("noise_multiplier: ledger 2.0, config 1.0" in reason for reason in reasons)
    assert any("recorded" in reason and "schedule gives" in reason for reason in reasons)
    assert "FAIL" in capsys.readouterr().out


def test_a_removed_round_fails(private_run: Path, tmp_path: Path) -> None:
    run = copy_of(private_run, tmp_path)
    lines = (run / "rounds.jsonl").read_text().splitlines(keepends=True)
    (run / "rounds.jsonl").write_text("".join(lines[:1] + lines[2:]))
    reasons = audit_run(run, AuditOptions(item_set_devices=4))["verdict"]["reasons"]
    assert any("line 2 (round 3)" in reason and "removed" in reason for reason in reasons)
    assert any("rounds were removed or added" in reason for reason in reasons)
    assert any("rounds joined per device" in reason for reason in reasons)


def test_a_consistently_rewritten_run_is_caught_only_by_the_head_kept_elsewhere(private_run: Path,
                                                                               tmp_path: Path) -> None:
    run = copy_of(private_run, tmp_path)
    chain = json.loads((run / "record-chain.json").read_text())
    assert audit_run(run, AuditOptions(expected_head="0" * 64, item_set_devices=4))["verdict"]["result"] == "FAIL"
    assert audit_run(run, AuditOptions(expected_head=chain["head"], item_set_devices=4))["verdict"]["result"] == \
        "PASS"


def test_a_released_model_changed_after_the_run_fails_integrity(private_run: Path, tmp_path: Path, capsys) -> None:
    run = copy_of(private_run, tmp_path)
    parameters = run / "final-model" / "parameters.npz"
    data = bytearray(parameters.read_bytes())
    data[len(data) // 2] ^= 0x01
    parameters.write_bytes(bytes(data))
    assert main(["audit", str(run), "--item-set-devices", "4"]) == 1  # a FAIL, not an input error
    assert "final-model/ (the released model) fails its check" in " ".join(capsys.readouterr().out.split())
    result = json.loads((run / "audit.json").read_text())
    assert result["verdict"]["result"] == "FAIL" and result["item_set"] is None
    assert "Not run: the released model fails its integrity check." in (run / "audit.md").read_text()


def test_an_edited_federation_manifest_fails_integrity(private_run: Path, tmp_path: Path) -> None:
    run = copy_of(private_run, tmp_path)
    values = json.loads((run / "federation.json").read_text())
    values["max_training_rows"] = 10**9
    (run / "federation.json").write_text(json.dumps(values))
    reasons = audit_run(run, AuditOptions(item_set_devices=4))["verdict"]["reasons"]
    assert any("federation.json: does not match the federation the data gives" in reason for reason in reasons)


def test_a_checkpoint_that_contradicts_itself_fails_integrity(private_run: Path, tmp_path: Path) -> None:
    run = copy_of(private_run, tmp_path)
    latest = run / "checkpoint" / "latest.json"
    values = json.loads(latest.read_text())
    values["completed_round"] -= 1  # --resume would replay the last round a second time
    latest.write_text(json.dumps(values))
    reasons = audit_run(run, AuditOptions(item_set_devices=4))["verdict"]["reasons"]
    assert any("checkpoint is damaged (latest.json: completed_round" in reason for reason in reasons)


def test_an_unfinished_run_is_told_to_finish_first(private_run: Path, tmp_path: Path, capsys) -> None:
    run = copy_of(private_run, tmp_path)
    shutil.rmtree(run / "final-model")
    assert main(["audit", str(run)]) == 2
    assert f"fedrec simulate --resume {run}`, then audit it" in " ".join(capsys.readouterr().err.split())


def test_bad_input_gets_one_clear_error(private_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["audit", str(tmp_path / "nowhere")]) == 2
    assert "not a fedrec run directory (no config.json)" in capsys.readouterr().err
    for devices in ("-5", "0"):  # refused before any audit work, and before the run directory is read
        assert main(["audit", str(private_run), f"--item-set-devices={devices}"]) == 2
        assert f"--item-set-devices: the item-set attack needs at least 1 device, got {devices}" in \
            capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
    run = copy_of(private_run, tmp_path)
    record = json.loads((run / "canaries.json").read_text())
    record["included"] = [not value for value in record["included"]]  # claim the other coins
    (run / "canaries.json").write_text(json.dumps(record))
    assert main(["audit", str(run)]) == 2
    assert "canaries.json: does not match the canaries the config draws" in capsys.readouterr().err
    lines = (run / "rounds.jsonl").read_text().splitlines()
    (run / "rounds.jsonl").write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")
    assert main(["audit", str(run)]) == 2
    assert "rounds.jsonl, line 2: not a JSON round record" in capsys.readouterr().err
