"""A real deployment on 127.0.0.1, as docs/deployment.md and simulations/examples/local_deployment.py do it.

``fedrec deploy certs``, a SuperLink with TLS and node authentication, node registration,
three SuperNodes whose ClientApps train on app devices' encrypted SDK stores, and a short
``flwr run`` with secure aggregation whose server holds no user data: it gets the federation
manifest made from the app's catalogue, and the config names an interaction file it cannot
read (mode 000) and could not parse, so any attempt to load data would fail the run. Then a
SuperNode with an unregistered key and a plaintext (``--insecure``) SuperNode are both refused.
Every process is started here, waited on with a bound, and stopped by PID with its whole
process tree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.sdk.device import Device
from client.sdk.store import KeySource
from recsys_core.bundle import BundleError, read_bundle, write_bundle
from recsys_core.bundle_signing import load_public_key
from recsys_core.secure_aggregation.identity import DeviceAuthority, write_authority_key
from simulations.examples.local_deployment import (
    LocalDeployment,
    federation_manifest,
    initial_bundle,
    kill_tree,
    run_config,
    start_app_supernodes,
)

NODES = 3

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalDeployment]:
    deployment = LocalDeployment(tmp_path, supernodes=NODES + 1)
    try:
        yield deployment
    finally:
        deployment.stop()


def test_a_tls_deployment_with_authenticated_app_devices_runs_secure_aggregation(deployment) -> None:
    credentials, folder = deployment.credentials, deployment.folder
    deployment.start_superlink()
    for public_key in credentials.supernode_public_keys[:NODES]:
        deployment.register(public_key)
    # The app ships a bundle signed with the deployment's key, and every node pins that key.
    bundle = initial_bundle(folder / "initial-model", credentials.bundle_signing_key)
    start_app_supernodes(deployment, bundle, NODES)
    before = Device.open(folder / "device-0.store", KeySource.from_app_key(bytes.fromhex(
        (folder / "device-0.key").read_text()))).training_state()

    # The data directory the server is pointed at: unreadable, and garbage had it been read (root ignores modes).
    hidden = folder / "interactions"
    hidden.mkdir()
    (hidden / "log.csv").write_bytes(b"\x00 not an interaction log \xff")
    hidden.chmod(0)
    run_dir = folder / "run"
    config = run_config(folder, rounds=2, clients=NODES, interactions=hidden / "log.csv")
    try:
        result = deployment.run(config, federation_manifest(folder, bundle, NODES,
                                                            credentials.device_authority_public_key), run_dir)
    finally:
        hidden.chmod(0o700)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((run_dir / "config.json").read_text())["data"]["path"] == str(hidden / "log.csv")
    assert (run_dir / "federation.json").exists()
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [record["status"] for record in rounds] == ["aggregated", "aggregated"], rounds
    assert all(record["participants"] == NODES for record in rounds)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["secure_aggregation"]["rounds_failed"] == 0 and 0 <= summary["test"]["full/ndcg@10"] <= 1
    assert summary["secure_aggregation"]["device_keys"].startswith("certified by device authority")
    # The device trained on its store: its private parameters are there now, and it ranks with the new model.
    device = Device.open(folder / "device-0.store", KeySource.from_app_key(bytes.fromhex(
        (folder / "device-0.key").read_text())), trusted_bundle_keys=[load_public_key(credentials.bundle_public_key)])
    assert not before and any(name.startswith("private/") for name in device.training_state())
    device.load_bundle(run_dir / "final-model")  # the server signed it with the deployment's key
    assert len(device.recommend(k=5)) == 5
    # A bundle rewritten without that key (its digests all fixed) is refused by the pinning device.
    forged = write_bundle(folder / "forged", read_bundle(run_dir / "final-model"))
    with pytest.raises(BundleError, match="refused: it is not signed"):
        device.load_bundle(forged)

    # A node whose key was never registered: refused at activation, exits by itself.
    stranger = deployment.supernode("unregistered", credentials.supernode_private_keys[NODES], "partition-id=0")
    assert stranger.wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in deployment.log("unregistered")
    # A node speaking plaintext to the TLS port: every connection attempt fails; it gives up.
    plaintext = deployment.supernode("plaintext", None, "partition-id=0", "--insecure", "--max-retries", "3")
    assert plaintext.wait(timeout=90) != 0
    assert "Giving up reconnection" in deployment.log("plaintext")


def test_a_dead_supernode_is_counted_once_left_out_and_the_secure_rounds_go_on(deployment) -> None:
    """A node killed after round 1: its round fails (3 devices cannot lose one and unmask), then the run
    goes on with the two that answer, counts the dead one once, and ends with test metrics."""
    credentials, folder = deployment.credentials, deployment.folder
    deployment.start_superlink()
    for public_key in credentials.supernode_public_keys[:NODES]:
        deployment.register(public_key)
    bundle = initial_bundle(folder / "initial-model", credentials.bundle_signing_key)
    nodes = start_app_supernodes(deployment, bundle, NODES)
    config = run_config(folder, rounds=4, clients=NODES)
    config.write_text(config.read_text().replace("round_timeout = 120", "round_timeout = 30"))
    run_dir = folder / "run"
    run = deployment.start_run(config, federation_manifest(folder, bundle, NODES), run_dir)
    deadline = time.monotonic() + 240
    while not ((run_dir / "rounds.jsonl").exists() and (run_dir / "rounds.jsonl").read_text().strip()):
        assert time.monotonic() < deadline and run.poll() is None, deployment.log("flwr-run")[-3000:]
        time.sleep(0.5)
    kill_tree(nodes[2].pid)
    run.wait(timeout=400)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [record["status"] for record in rounds] == ["aggregated", "failed", "aggregated", "aggregated"], rounds
    assert [record["participants"] for record in rounds] == [NODES, 0, NODES - 1, NODES - 1]
    # Counted once, in the round it died in; then held out of sampling.
    assert [[failure["partition"] for failure in record["failures"]] for record in rounds] == [[], [2], [], []]
    assert [record["sampled"] for record in rounds] == [NODES, NODES, NODES - 1, NODES - 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"] and summary["failures_total"] == 1


def test_a_supernode_whose_identity_the_device_authority_did_not_certify_cannot_join_a_secure_round(
        deployment, tmp_path: Path) -> None:
    """Node 2 is a registered SuperNode (its TLS and node key are fine) whose device identity was certified by
    another authority (say one the server made): it is not registered for secure aggregation, and the two
    certified devices aggregate without it."""
    credentials, folder = deployment.credentials, deployment.folder
    deployment.start_superlink()
    for public_key in credentials.supernode_public_keys[:NODES]:
        deployment.register(public_key)
    bundle = initial_bundle(folder / "initial-model", credentials.bundle_signing_key)
    rogue_authority = DeviceAuthority.generate()
    rogue_authority.issue().write(tmp_path / "rogue.identity")
    write_authority_key(tmp_path / "rogue-authority.pub", rogue_authority.public_key)
    start_app_supernodes(deployment, bundle, NODES,
                         {NODES - 1: (tmp_path / "rogue.identity", tmp_path / "rogue-authority.pub")})
    run_dir = folder / "run"
    result = deployment.run(run_config(folder, rounds=1, clients=NODES),
                            federation_manifest(folder, bundle, NODES, credentials.device_authority_public_key),
                            run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record,) = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert record["status"] == "aggregated" and record["participants"] == NODES - 1, record
    assert [(f["partition"], f["reason"].split(":")[0]) for f in record["failures"]] == [(2, "key not certified")]
    assert json.loads((run_dir / "summary.json").read_text())["test"]
