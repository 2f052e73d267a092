"""A whole deployment on this machine: a TLS SuperLink, authenticated SuperNodes, app devices, ``flwr run``.

    python -m simulations.examples.local_deployment [--workspace DIR] [--rounds 2]

What it does, as docs/deployment.md and docs/client-sdk.md describe:

1. ``fedrec deploy certs``: a CA, the SuperLink's certificate, one key pair per SuperNode,
   and a device authority that certifies one device identity per SuperNode.
2. Starts ``flower-superlink`` with TLS and node authentication on 127.0.0.1.
3. Registers the SuperNodes' public keys with ``flwr supernode register``.
4. Sets up three app devices: each has an encrypted SDK store where the "app" recorded
   its user's purchases, and the current global model bundle.
5. Starts one SuperNode per device with ``store-path``, ``store-key-file``, ``bundle-path``,
   ``identity-path`` and ``device-authority`` in its node config: the ClientApp trains on what
   the app recorded, and masks only with neighbours whose keys the authority vouches for.
6. Writes the federation manifest from the app's catalogue alone (no interaction is read:
   the devices' feedback stays in their stores) and the authority's public key, then
   ``flwr run`` with secure aggregation;
   each device then loads the new global model and recommends, on the device.

Every process is stopped (by process tree) when it ends, also on errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import numpy as np

from client.sdk.device import Device
from client.sdk.store import KeySource
from recsys_core.bundle import ModelBundle, bundle_catalog, read_bundle, write_bundle
from recsys_core.bundle_signing import load_public_key, load_signing_key
from recsys_core.data.config import DataConfig
from recsys_core.data.partitions import PartitionConfig
from recsys_core.data.synthetic import SyntheticConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.manifest import MANIFEST_FILE, FederationManifest
from recsys_core.federated.state import state_to_arrays
from recsys_core.federated.wire import DEVICE_AUTHORITY_NODE_KEY, IDENTITY_PATH_NODE_KEY
from recsys_core.models import CatalogInfo, build_model
from recsys_core.secure_aggregation.identity import read_authority_key
from recsys_core.training import seeded
from server.deploy import make_credentials

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONNECTION = "fedrec-local"
SYNTHETIC = {"n_users": 30, "n_items": 40, "seed": 2}
MODEL_OPTIONS = {"gmf_dim": 4, "mlp_layers": [8, 4]}
#: The public bound on one device's training rows that the manifest declares (each app device records 8).
MAX_TRAINING_ROWS = 64


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def kill_tree(pid: int) -> None:
    """Stops ``pid`` and everything it started (the SuperLink starts its executor in a new session)."""
    for child in children(pid):
        kill_tree(child)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class LocalDeployment:
    """A SuperLink and SuperNodes on 127.0.0.1, their credentials and logs in ``folder``."""

    def __init__(self, folder: Path, supernodes: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.credentials = make_credentials(folder / "certificates", ["127.0.0.1"], supernodes=supernodes)
        home = folder / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.credentials.ca_certificate}"\n')
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def start(self, name: str, command: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                   cwd=cwd or self.folder)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def flwr(self, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *arguments], env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)

    def start_superlink(self, timeout: float = 60) -> None:
        credentials = self.credentials
        self.start("superlink", [
            str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(credentials.ca_certificate),
            "--ssl-certfile", str(credentials.superlink_certificate), "--ssl-keyfile", str(credentials.superlink_key),
            "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.folder / "state.db"), "--disable-runtime-dependency-installation"])
        context = ssl.create_default_context(cafile=str(credentials.ca_certificate))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", context=context, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"SuperLink not healthy after {timeout} s:\n{self.log('superlink')[-3000:]}")

    def register(self, public_key: Path) -> None:
        registered = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if registered.returncode != 0:
            raise RuntimeError(f"flwr supernode register failed: {registered.stdout}{registered.stderr}")

    def supernode(self, name: str, key: Path | None, node_config: str, *extra: str) -> subprocess.Popen:
        command = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                   "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", node_config, *extra]
        if key is not None:
            command += ["--root-certificates", str(self.credentials.ca_certificate),
                        "--auth-supernode-private-key", str(key)]
        return self.start(name, command)

    def run_arguments(self, run_config: Path, manifest: Path, run_dir: Path) -> list[str]:
        """``flwr run`` of the app; the server signs the final model with the deployment's bundle-signing key."""
        return ["run", str(ROOT), CONNECTION, "--stream", "--run-config",
                f"config='{run_config}' manifest='{manifest}' run-dir='{run_dir}' "
                f"bundle-signing-key='{self.credentials.bundle_signing_key}'"]

    def run(self, run_config: Path, manifest: Path, run_dir: Path,
            timeout: float = 420) -> subprocess.CompletedProcess:
        return self.flwr(*self.run_arguments(run_config, manifest, run_dir), timeout=timeout)

    def start_run(self, run_config: Path, manifest: Path, run_dir: Path) -> subprocess.Popen:
        """The same run, in the background (stopped with the deployment); its output goes to ``flwr-run.log``."""
        return self.start("flwr-run", [str(BIN / "flwr"), *self.run_arguments(run_config, manifest, run_dir)],
                          cwd=ROOT)

    def stop(self) -> None:
        for process in self.processes:
            kill_tree(process.pid)
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def run_config(folder: Path, rounds: int, clients: int, interactions: Path | None = None) -> Path:
    """The run's config: the model the devices' bundle was made for, secure aggregation and user-level DP on.

    ``interactions``: name this file as the run's data (``data.dataset = "file"``); the server
    must never open it, since its devices train on their stores.
    """
    path = folder / "run.toml"
    data = (f'dataset = "file"\npath = "{interactions}"' if interactions is not None else
            f'dataset = "synthetic"\n[data.synthetic]\nn_users = {SYNTHETIC["n_users"]}\n'
            f'n_items = {SYNTHETIC["n_items"]}\nseed = {SYNTHETIC["seed"]}')
    path.write_text(f"""
seed = 0
output_dir = "{folder / 'runs'}"
[data]
{data}
[partition]
users_per_device = {SYNTHETIC['n_users'] // clients}
[model]
name = "neumf"
[model.options]
gmf_dim = {MODEL_OPTIONS['gmf_dim']}
mlp_layers = {MODEL_OPTIONS['mlp_layers']}
[local]
epochs = 1
[server]
rounds = {rounds}
devices_per_round = {clients}
min_devices = 2
evaluate_every = 0
devices_per_evaluation = {clients}
round_timeout = 120
connect_timeout = 60
[secure_aggregation]
enabled = true
# User-level DP with distributed noise, as every fedrec run: each device adds its share inside the
# masked sum. Sized for this demo's {clients} devices (delta below 1 / devices), not for utility.
[privacy.user_level]
enabled = true
noise_placement = "distributed"
clip_norm = 1.0
noise_multiplier = 1.0
min_surviving_devices = 2
target_delta = 0.01
""")
    return path


def initial_bundle(folder: Path, signing_key: Path | None = None) -> Path:
    """The global model the app ships with before any federated round: initial weights, the catalogue;
    signed with the deployment's ``bundle-signing.key`` when given."""
    # The catalogue exactly as the server will build it (preprocessed and split the same way).
    train = load_federated_data(DataConfig(synthetic=SyntheticConfig(**SYNTHETIC)), PartitionConfig()).split.train
    with seeded(0):
        model = build_model("neumf", CatalogInfo(1, train.n_items), MODEL_OPTIONS)
    return write_bundle(folder, ModelBundle("neumf", MODEL_OPTIONS, train.n_items,
                                            state_to_arrays(model.shared_state()), {"rounds": 0},
                                            bundle_catalog(train)),
                        None if signing_key is None else load_signing_key(signing_key))


def federation_manifest(folder: Path, bundle: Path, devices: int, device_authority: Path | None = None) -> Path:
    """The manifest the server reads, from the app's catalogue and declared bounds: no interaction at all.

    ``device_authority``: the deployment's ``device-authority.pub``; the server then registers only
    keys that an identity it certified endorses.
    """
    manifest = FederationManifest.from_bundle_catalog("app", read_bundle(bundle).catalog, num_partitions=devices,
                                                      max_training_rows=MAX_TRAINING_ROWS)
    if device_authority is not None:
        manifest = dataclasses.replace(manifest, device_authority=read_authority_key(device_authority).hex())
    return manifest.write(folder / MANIFEST_FILE)


def app_device(folder: Path, index: int, bundle: Path, rng: np.random.Generator,
               bundle_public_key: Path | None = None) -> dict[str, str]:
    """An app's device: its key (as the OS keystore would hold it), its store with recorded purchases; with
    ``bundle_public_key`` it pins the deployment's bundle-signing key (its node loads only signed bundles)."""
    key = os.urandom(32)
    (folder / f"device-{index}.key").write_text(key.hex())
    pinned = None if bundle_public_key is None else [load_public_key(bundle_public_key)]
    device = Device.open(folder / f"device-{index}.store", KeySource.from_app_key(key), trusted_bundle_keys=pinned)
    device.load_bundle(bundle)
    for step, item in enumerate(rng.choice(SYNTHETIC["n_items"], 8, replace=False)):
        device.record(str(item), "purchase", timestamp=step)
    settings = {"store-path": str(folder / f"device-{index}.store"),
                "store-key-file": str(folder / f"device-{index}.key"), "bundle-path": str(bundle)}
    if bundle_public_key is not None:
        settings["bundle-public-key"] = str(bundle_public_key)
    return settings


def start_app_supernodes(deployment: LocalDeployment, bundle: Path, count: int,
                         enrolments: dict[int, tuple[Path, Path]] | None = None) -> list[subprocess.Popen]:
    """``count`` app devices (encrypted stores, the signed ``bundle``, the bundle key pinned), each a SuperNode
    with its certified identity and the device authority pinned: the deployment's, or for the indices in
    ``enrolments`` another (identity file, authority public key file)."""
    credentials, rng = deployment.credentials, np.random.default_rng(0)
    nodes = []
    for index in range(count):
        settings = app_device(deployment.folder, index, bundle, rng, credentials.bundle_public_key)
        identity, authority = (enrolments or {}).get(
            index, (credentials.supernode_identities[index], credentials.device_authority_public_key))
        settings.update({IDENTITY_PATH_NODE_KEY: str(identity), DEVICE_AUTHORITY_NODE_KEY: str(authority)})
        node_config = " ".join([f"partition-id={index} num-partitions={count}",
                                *(f'{key}="{value}"' for key, value in settings.items())])
        nodes.append(deployment.supernode(f"supernode-{index}", credentials.supernode_private_keys[index],
                                          node_config))
    return nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", help="folder for credentials, stores and logs (default: a new temp folder)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    folder = Path(args.workspace or tempfile.mkdtemp(prefix="fedrec-deployment-"))
    folder.mkdir(parents=True, exist_ok=True)
    devices = 3
    deployment = LocalDeployment(folder, supernodes=devices)
    try:
        print(f"1-2. credentials in {folder / 'certificates'}; starting the SuperLink on 127.0.0.1:{deployment.port}")
        deployment.start_superlink()
        for public_key in deployment.credentials.supernode_public_keys:
            deployment.register(public_key)
        print(f"3. registered {devices} SuperNodes")
        credentials = deployment.credentials
        bundle = initial_bundle(folder / "initial-model", credentials.bundle_signing_key)
        start_app_supernodes(deployment, bundle, devices)
        print(f"4-5. {devices} app devices with encrypted stores joined as SuperNodes")
        run_dir = folder / "run"
        manifest = federation_manifest(folder, bundle, devices, credentials.device_authority_public_key)
        result = deployment.run(run_config(folder, args.rounds, devices), manifest, run_dir)
        # `flwr run --stream` exits 0 whatever the ServerApp did; the run directory says whether it succeeded.
        summary_file = run_dir / "summary.json"
        if result.returncode != 0 or not summary_file.exists() or not json.loads(summary_file.read_text()).get("test"):
            print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
            print(f"the run did not finish; see the logs in {folder}", file=sys.stderr)
            return 1
        print(f"6. flwr run finished: {run_dir}")
        key = bytes.fromhex((folder / "device-0.key").read_text())
        device = Device.open(folder / "device-0.store", KeySource.from_app_key(key),
                             trusted_bundle_keys=[load_public_key(credentials.bundle_public_key)])
        device.load_bundle(run_dir / "final-model")  # signed by the server with the deployment's key
        print("device 0 personalises its own embedding offline, final loss:", device.personalise())
        print("device 0 recommends, on the device:", [r.item for r in device.recommend(k=5)])
        print(f"logs: {folder}/*.log")
        return 0
    finally:
        deployment.stop()


if __name__ == "__main__":
    sys.exit(main())
