"""The Flower ServerApp.

``fedrec simulate`` builds it with :func:`make_server_app` (config resolved, progress
callback attached); ``flwr run .`` uses the module-level ``app``, which reads the same
config keys from the run config: ``config`` (a TOML file) plus dotted overrides such
as ``server.rounds=5``, ``manifest`` (the federation manifest the data owner wrote with
``fedrec manifest``), and optionally ``run-dir`` and ``resume``. The server reads the
manifest and the devices' replies, never a dataset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from recsys_core.bundle_signing import load_signing_key
from recsys_core.config import apply_overrides, read_toml
from recsys_core.errors import FedrecError
from recsys_core.federated.cohort import DeviceProgress
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.manifest import MANIFEST_FILE, FederationManifest, ManifestError, read_manifest
from recsys_core.run_records import environment_record, new_run_directory, write_json
from server.prompt_grid import PromptGrid
from server.round_loop import require_test_metrics
from server.rounds import FederatedRun, RoundCallback
from server.run_directory import NothingToResumeError, RunDirectory, open_run_directory

#: Run config key: the deployment's ``bundle-signing.key``, to sign ``final-model/`` for devices that pin its key.
BUNDLE_SIGNING_KEY_RUN_CONFIG = "bundle-signing-key"
RESERVED_KEYS = ("config", "run-dir", "resume", "manifest", BUNDLE_SIGNING_KEY_RUN_CONFIG)
logger = logging.getLogger("fedrec.server")


def config_from_run_config(run_config: dict[str, Any]) -> FederatedConfig:
    """The FederatedConfig named by ``flwr run``'s run config (same keys as ``fedrec simulate``)."""
    values = read_toml(str(run_config["config"])) if run_config.get("config") else {}
    # pyproject.toml lists every overridable key with "" as its default: "" means "not set here".
    overrides = [f"{key}={_toml_literal(value)}" for key, value in run_config.items()
                 if key not in RESERVED_KEYS and value != ""]
    return FederatedConfig.from_dict(apply_overrides(values, overrides))


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def prepare_run_directory(config: FederatedConfig, run_dir: str | None, resume: bool) -> RunDirectory:
    """A new run directory (config and environment recorded), or the existing one when resuming.

    A resumed directory is checked first and left untouched when it cannot continue: not a
    simulate run, records that do not match the checkpoint (:meth:`RunDirectory.resume_from`),
    or nothing left to do (:class:`NothingToResumeError`).
    """
    if resume:
        if not run_dir:
            raise FedrecError("cannot resume: no run directory given; name the folder fedrec simulate printed")
        directory, _ = open_run_directory(run_dir, "--resume")
        directory.resume_from(config.server.rounds)
        return directory
    path = Path(run_dir) if run_dir else new_run_directory(
        config.output_dir, f"federated-{config.data.dataset}-{config.model.name}")
    directory = RunDirectory(path)
    write_json(directory.path / "config.json", json.loads(config.to_json()))
    write_json(directory.path / "environment.json", environment_record())
    return directory


def run_manifest(run_directory: RunDirectory, given: str | None) -> FederationManifest:
    """The run's federation manifest: the one given (kept in the run directory), or the run directory's own."""
    kept = run_directory.path / MANIFEST_FILE
    if given:
        manifest = read_manifest(given)
        if not kept.exists():
            manifest.write(kept)
        elif read_manifest(kept) != manifest:
            raise ManifestError(f"{given}: differs from the manifest this run started with ({kept})")
        return manifest
    if not kept.exists():
        raise ManifestError(f"{run_directory.path}: the server needs a federation manifest and was given none; "
                            "write one with `fedrec manifest --config CONFIG --output federation.json` (the data "
                            "owner's step) and pass it as --run-config 'manifest=\"federation.json\"'")
    return read_manifest(kept)


#: In ``make_server_app``'s results: the FedrecError that stopped the run.
RUN_ERROR_KEY = "_run_error"


def make_server_app(config: FederatedConfig, run_directory: RunDirectory, resume: bool = False,
                    on_round: RoundCallback | None = None, results: dict[str, Any] | None = None,
                    on_device: DeviceProgress | None = None) -> ServerApp:
    """A ServerApp bound to a resolved config and the run directory's manifest; the summary goes in ``results``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        manifest = run_manifest(run_directory, None)
        try:
            summary = FederatedRun(config, run_directory, manifest, on_round, on_device=on_device).run(
                grid, resume=resume)
        except FedrecError as error:
            if results is None:
                raise
            # Handed to the launcher, which raises it once Flower has stopped, instead of a traceback here.
            summary = {RUN_ERROR_KEY: error}
        if results is not None:
            results.update(summary)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    config = config_from_run_config(run_config).require_private()
    resume = bool(run_config.get("resume", False))
    try:
        directory = prepare_run_directory(config, str(run_config.get("run-dir") or "") or None, resume)
    except NothingToResumeError as complete:
        logger.warning("%s", complete)
        return
    manifest = run_manifest(directory, str(run_config.get("manifest") or "") or None)
    signing_key_path = str(run_config.get(BUNDLE_SIGNING_KEY_RUN_CONFIG) or "")
    signing_key = load_signing_key(signing_key_path) if signing_key_path else None
    summary = FederatedRun(config, directory, manifest, bundle_signing_key=signing_key).run(PromptGrid(grid),
                                                                                          resume=resume)
    # Flower then marks the run failed (`flwr ls`), so a deployment that lost its devices is not a success.
    require_test_metrics(config, directory, summary)
