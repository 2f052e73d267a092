"""``fedrec simulate``: run a federation on this machine, on Flower's simulation engine or the cohort engine.

Under Flower's engine (Ray) the ClientApp is loaded by reference, as ``flwr run`` loads
it from pyproject.toml, so the server package never imports the client package. The
cohort engine (``simulation.engine = "cohort"``, :mod:`server.cohort_engine`) runs the
same devices' code in this process.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.clientapp import ClientApp

from recsys_core.errors import ConfigError, FedrecError
from recsys_core.federated.cohort import DeviceProgress
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData, load_federated_data
from recsys_core.federated.manifest import MANIFEST_FILE
from recsys_core.federated.wire import DEVICE_STATE_DIR_ENV
from recsys_core.models import warn_if_weights_ignored
from recsys_core.run_records import write_json
from recsys_core.secure_aggregation.identity import SIMULATED_IDENTITIES, enrol_simulated_devices
from recsys_core.training import popularity_test_metrics, require_evaluable
from server import message_delivery
from server.round_loop import require_test_metrics
from server.rounds import RoundCallback
from server.run_directory import RunDirectory
from server.server_app import RUN_ERROR_KEY, make_server_app, prepare_run_directory, run_manifest

CLIENT_APP_REFERENCE = "client.client_app:app"


def load_client_app(reference: str = CLIENT_APP_REFERENCE) -> ClientApp:
    module_name, _, attribute = reference.partition(":")
    app = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(app, ClientApp):
        raise ConfigError(f"{reference} is not a Flower ClientApp")
    return app


def validate_before_start(config: FederatedConfig, run: bool = True) -> FederatedData:
    """Validates the config against the data; returns the data the simulated devices hold. Runs before Ray starts.

    Under local DP the delta must be below 1 / (the fewest training examples on a
    device); the count used here is interactions, which no model's DP samples exceed
    except NeuMF's, which equal them. Each device checks its exact count again.
    """
    config.validate()
    data = load_federated_data(config.data, config.partition)
    # Here, not on every device after Ray has started; validation only if the run evaluates between rounds.
    require_evaluable(data.split, validation=config.server.evaluate_every > 0)
    warn_if_weights_ignored(config.model.name, data.split.train)
    min_local_examples = None
    if config.privacy.local.enabled:
        train = data.partitioners[0]
        per_partition = np.bincount(train.assignment[np.asarray(train.log.user_ids)], minlength=data.num_devices)
        min_local_examples = int(per_partition.min())
    config.validate(num_devices=data.num_devices, min_local_examples=min_local_examples)
    if run:  # a run that starts must protect its users or say it does not (a manifest describes, it runs nothing)
        config.require_private()
    return data


def provision_federation(config: FederatedConfig, directory: RunDirectory, data: FederatedData) -> None:
    """The launcher's part, as the data owner: the manifest the server may read, the devices' own storage.

    The manifest is written once per run (a resumed run keeps the one it started with).
    Each simulated device keeps its durable state in a file of its own; the launcher, not
    the server, names the folder, and Ray's workers inherit the environment variable.
    """
    path = directory.path / MANIFEST_FILE
    manifest = data.manifest(config.data.dataset)
    if config.secure_aggregation.enabled:
        # The in-process device authority: every partition gets a certified identity; the server gets
        # only the authority's public key, through the manifest.
        authority = enrol_simulated_devices(directory.devices / SIMULATED_IDENTITIES, data.num_devices)
        manifest = dataclasses.replace(manifest, device_authority=authority.hex())
    if not path.exists():
        manifest.write(path)
    elif not manifest.written_at(path):
        # The server trusts the kept manifest's bounds (e.g. max_training_rows caps a device's weight).
        raise FedrecError(f"{path}: does not match the federation this data gives; it was edited, or the data "
                          "changed since the run started. Restore it (or the data), or start a new run; nothing "
                          "was changed")
    os.environ[DEVICE_STATE_DIR_ENV] = str(directory.devices)


def run_cohort_simulation(config: FederatedConfig, directory: RunDirectory, data: FederatedData, resume: bool,
                          on_round: RoundCallback | None, on_device: DeviceProgress | None) -> dict[str, Any]:
    """The cohort engine: the server's loop and every device in this process."""
    from server.cohort_engine import CohortRun

    torch.set_num_threads(config.simulation.torch_threads_per_device)
    manifest = run_manifest(directory, None)
    return CohortRun(config, directory, manifest, data, on_round, on_device).run(resume=resume)


def backend_config(config: FederatedConfig) -> dict[str, Any]:
    workers = config.simulation.max_workers or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": config.simulation.num_cpus_per_device, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": int(workers * config.simulation.num_cpus_per_device),
            "include_dashboard": False,
            "log_to_driver": False,
        },
    }


class DeviceTracebackFilter(logging.Filter):
    """Drops Flower's per-device error lines and tracebacks (its Ray worker loop and backend log each one).

    The server already records each failed device, with its reason, in rounds.jsonl and in
    the progress display; one hostile or broken device otherwise prints ~200 lines per round.
    ``--verbose`` keeps them.
    """

    _SOURCES = (("vce_api.py", "worker"), ("raybackend.py", "process_message"))

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.pathname.endswith(path) and record.funcName == function
                       for path, function in self._SOURCES)


DEVICE_TRACEBACKS = DeviceTracebackFilter()


def keep_ray_on_loopback() -> None:
    """Makes Ray bind to 127.0.0.1 only; by default it listens on every interface of the machine.

    Ray maps an explicit 127.0.0.1 node address back to the public one unless its
    single-machine mode is forced, which is what this variable does.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def run_federated_simulation(
    config: FederatedConfig,
    run_dir: str | None = None,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    verbose: bool = False,
    on_device: DeviceProgress | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[RunDirectory, dict[str, Any]]:
    """Runs a whole simulation; returns the run directory and the final summary.

    ``on_device`` is called with the count of devices done so far in an exchange, for progress within long
    rounds and the final test: after each device under the cohort engine, as each exchange starts and ends
    under Flower's (one wait for every reply). ``on_phase`` names each start-up phase as it begins
    (reading the data, starting Ray), the ones before the first round has anything to count.
    """
    phase = on_phase or (lambda _: None)
    phase("reading the data")
    data = validate_before_start(config)
    directory = prepare_run_directory(config, run_dir, resume)
    provision_federation(config, directory, data)
    if config.simulation.engine == "cohort":
        summary = run_cohort_simulation(config, directory, data, resume, on_round, on_device)
        require_test_metrics(config, directory, summary)
        return directory, with_popularity_reference(config, directory, data, summary)
    results: dict[str, Any] = {}
    server_app = make_server_app(config, directory, resume=resume, on_round=on_round, results=results,
                                 on_device=on_device)
    keep_ray_on_loopback()
    message_delivery.install()
    workers = int(backend_config(config)["init_args"]["num_cpus"] / config.simulation.num_cpus_per_device)
    phase(f"starting Ray: {workers} worker(s) for {data.num_devices:,} devices; each worker loads the data once")
    from flwr.common.logger import FLOWER_LOGGER
    from flwr.simulation import run_simulation

    if verbose:
        FLOWER_LOGGER.removeFilter(DEVICE_TRACEBACKS)
    else:
        # Flower's INFO lines and its run_simulation deprecation notice would bury the progress bar;
        # client failures still reach the progress display and rounds.jsonl.
        FLOWER_LOGGER.setLevel(logging.ERROR)
        FLOWER_LOGGER.addFilter(DEVICE_TRACEBACKS)  # adding the same filter twice keeps one
        logging.getLogger("fedrec").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(server_app=server_app, client_app=load_client_app(), num_supernodes=data.num_devices,
                   backend_config=backend_config(config), verbose_logging=verbose)
    if not results:
        raise FedrecError(f"the simulation ended without a result; see the log above and {directory.path}")
    if RUN_ERROR_KEY in results:
        raise results[RUN_ERROR_KEY]
    require_test_metrics(config, directory, results)
    return directory, with_popularity_reference(config, directory, data, results)


#: Popularity's test metrics on the run's test users, written by the launcher beside the sealed records.
POPULARITY_REFERENCE_FILE = "popularity-reference.json"


def with_popularity_reference(config: FederatedConfig, directory: RunDirectory, data: FederatedData,
                              summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with ``popularity_test``: Popularity on every test user, as the launcher (the data owner) sees it.

    The final test covers every device, so these are the same users. It is the evaluator's
    reference, computed from all the training data, not something the server learned;
    it goes in a file of its own, outside the record chain the server sealed.
    """
    if not summary.get("test"):
        return summary
    popularity = popularity_test_metrics(data.split, config.evaluation)
    write_json(directory.path / POPULARITY_REFERENCE_FILE,
               {"users": "every test user (the final test covers every device)", "test": popularity})
    return {**summary, "popularity_test": popularity}
