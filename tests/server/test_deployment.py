"""A real deployment on 127.0.0.1: SuperLink with TLS and node authentication, 3 SuperNodes, ``flwr run``.

Follows docs/deployment.md step by step: ``fedrec deploy certs``, a SuperLink, node
registration, SuperNodes, then a short run with secure aggregation. Then shows that a
SuperNode with an unregistered key and a plaintext (``--insecure``) SuperNode are both
refused. Every process is started here, waited on with a bound, and stopped by PID
with its whole process tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.deploy import make_credentials

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONNECTION = "fedrec-test"
NODES = 3

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def kill_tree(pid: int) -> None:
    """Stops ``pid`` and everything it started (the SuperLink starts its executor in a new session)."""
    for child in children(pid):
        kill_tree(child)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Deployment:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.credentials = make_credentials(folder / "certificates", ["127.0.0.1"], supernodes=NODES + 1)
        home = folder / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.credentials.ca_certificate}"\n')
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.folder)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def flwr(self, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *arguments], env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def supernode(self, name: str, key: Path | None, partition: int, *extra: str) -> subprocess.Popen:
        command = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                   "--host", "127.0.0.1", "--port", str(free_port()),
                   "--node-config", f"partition-id={partition} num-partitions={NODES}", *extra]
        if key is not None:
            command += ["--root-certificates", str(self.credentials.ca_certificate),
                        "--auth-supernode-private-key", str(key)]
        return self.start(name, command)

    def wait_until_healthy(self, timeout: float = 60) -> None:
        context = ssl.create_default_context(cafile=str(self.credentials.ca_certificate))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", context=context, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"SuperLink not healthy after {timeout} s:\n{self.log('superlink')[-3000:]}")

    def stop(self) -> None:
        for process in self.processes:
            kill_tree(process.pid)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    try:
        yield deployment
    finally:
        deployment.stop()


def run_config(folder: Path) -> Path:
    path = folder / "run.toml"
    path.write_text(f"""
seed = 0
output_dir = "{folder / 'runs'}"
[data]
dataset = "synthetic"
[data.synthetic]
n_users = 30
n_items = 40
seed = 2
[partition]
users_per_client = 10
[model]
name = "neumf"
[model.options]
gmf_dim = 4
mlp_layers = [8, 4]
[local]
epochs = 1
[server]
rounds = 2
clients_per_round = {NODES}
min_clients = 2
evaluate_every = 0
clients_per_evaluation = {NODES}
round_timeout = 120
connect_timeout = 60
[secure_aggregation]
enabled = true
""")
    return path


def test_a_tls_deployment_with_authenticated_nodes_runs_secure_aggregation(deployment: Deployment) -> None:
    credentials = deployment.credentials
    deployment.start("superlink", [
        str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(credentials.ca_certificate),
        "--ssl-certfile", str(credentials.superlink_certificate), "--ssl-keyfile", str(credentials.superlink_key),
        "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(deployment.port),
        "--database", str(deployment.folder / "state.db"), "--disable-runtime-dependency-installation"])
    deployment.wait_until_healthy()
    for public_key in credentials.supernode_public_keys[:NODES]:
        registered = deployment.flwr("supernode", "register", str(public_key), CONNECTION)
        assert registered.returncode == 0, registered.stdout + registered.stderr
    for index, key in enumerate(credentials.supernode_private_keys[:NODES]):
        deployment.supernode(f"supernode-{index}", key, index)

    run_dir = deployment.folder / "run"
    started = deployment.flwr("run", str(ROOT), CONNECTION, "--stream", "--run-config",
                              f"config='{run_config(deployment.folder)}' run-dir='{run_dir}'", timeout=420)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [record["status"] for record in rounds] == ["aggregated", "aggregated"], rounds
    assert all(record["participants"] == NODES for record in rounds)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["secure_aggregation"]["rounds_failed"] == 0
    assert 0 <= summary["test"]["full/ndcg@10"] <= 1

    # A node whose key was never registered: refused at activation, exits by itself.
    stranger = deployment.supernode("unregistered", credentials.supernode_private_keys[NODES], 0)
    assert stranger.wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in deployment.log("unregistered")
    # A node speaking plaintext to the TLS port: every connection attempt fails; it gives up.
    plaintext = deployment.supernode("plaintext", None, 0, "--insecure", "--max-retries", "3")
    assert plaintext.wait(timeout=90) != 0
    assert "Giving up reconnection" in deployment.log("plaintext")
