"""The ``fedrec`` command line.

Thin glue: parse flags into the typed configs of ``recsys_core``, show progress,
print a short table. Every :class:`FedrecError` is reported as one line naming
what is wrong and what to do, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from recsys_core.config import apply_overrides, parse_override, read_toml
from recsys_core.errors import ConfigError, FedrecError
from recsys_core.models import MODELS

console = Console()
error_console = Console(stderr=True)

HEADLINE_METRICS = ("ndcg@10", "hr@10", "recall@10", "mrr@10")


#: Command-line flags and the config keys they set; later sources win: file, flags, --set.
TRAIN_FLAGS = {"dataset": "data.dataset", "data_dir": "data.data_dir", "model": "model.name",
               "epochs": "train.epochs", "seed": "train.seed", "output_dir": "output_dir"}
SIMULATE_FLAGS = {"dataset": "data.dataset", "data_dir": "data.data_dir", "model": "model.name",
                  "not_private": "private",
                  "rounds": "server.rounds", "devices_per_round": "server.devices_per_round", "seed": "seed",
                  "output_dir": "output_dir", "audit_canaries": "data.canaries.count",
                  "engine": "simulation.engine"}


def _config_values(args: argparse.Namespace, flags: dict[str, str],
                   base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Config file (or ``base``), then explicit flags, then ``--set`` overrides: later wins."""
    values: dict[str, Any] = read_toml(args.config) if args.config else dict(base or {})
    overrides = []
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if isinstance(value, bool):
            overrides.append(f"{key}={str(value).lower()}")
        elif value is not None:
            overrides.append(f"{key}={_quoted(value) if isinstance(value, str) else value}")
    if getattr(args, "download", False):
        overrides.append("data.download=true")
    return apply_overrides(values, overrides + list(args.set or []))


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def metrics_table(title: str, metrics: dict[str, float], popularity: dict[str, float] | None = None,
                  caption: str | None = None) -> Table:
    """A short table: one row per headline metric, one column per protocol, and Popularity beside the model.

    ``popularity`` holds Popularity's metrics on the same test users; the ratio column says
    at a glance whether the model beats the list of most popular items.
    """
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    table.add_column("full ranking", justify="right")
    if popularity is not None:
        table.add_column("Popularity", justify="right")
        table.add_column("x Popularity", justify="right")
    table.add_column("sampled (1 + negatives)", justify="right")
    for name in HEADLINE_METRICS:
        full = metrics.get("full/" + name, float("nan"))
        row = [name, f"{full:.4f}"]
        if popularity is not None:
            baseline = popularity.get("full/" + name, float("nan"))
            row += [f"{baseline:.4f}", f"{full / baseline:.2f}" if baseline > 0 else "-"]
        table.add_row(*row, f"{metrics.get('sampled/' + name, float('nan')):.4f}")
    coverage = metrics.get("full/coverage@10")
    if coverage is not None:
        row = ["coverage@10", f"{coverage:.4f}"]
        if popularity is not None:
            row += [f"{popularity.get('full/coverage@10', float('nan')):.4f}", ""]
        table.add_row(*row, "")
    return table


#: Printed wherever a run that is not differentially private shows results.
NOT_PRIVATE = "NOT PRIVATE: no differential privacy protects the users in these results"


def privacy_table(privacy: dict[str, Any]) -> Table:
    """What the run guarantees: per privacy mode, its unit, epsilon at delta, accountant and assumption.

    One row per fact and one column per mode, so the long texts wrap in a wide column
    and the table stays readable in an 80-column terminal.
    """
    table = Table(title="Privacy guarantee", show_header=False)
    table.add_column("", style="bold", no_wrap=True)
    columns: list[list[str]] = []
    if local := privacy.get("local"):
        columns.append(["local DP-SGD (noise on each device alone)", local["unit_of_privacy"],
                        f"{local['epsilon_max']:.3g} max per device (median {local['epsilon_median']:.3g}, "
                        f"budget {local['target_epsilon']:g})", f"{local['delta']:g}", local["accountant"],
                        local["sampling"]])
    if user := privacy.get("user_level"):
        claim = "amplified" if user["claimed"] == "with_amplification" else "not amplified"
        columns.append([f"user-level DP ({user['noise_placement']} noise)", user["unit_of_privacy"],
                        f"{user['claimed_epsilon']:.3g} claimed ({claim}; {user['epsilon_with_amplification']:.3g} "
                        f"with amplification, {user['epsilon_without_amplification']:.3g} without)",
                        f"{user['delta']:g}", user["accountant"], user["reason"]])
    for _ in columns:
        table.add_column("", overflow="fold")
    for index, fact in enumerate(("mode", "unit", "epsilon", "delta", "accountant", "assumption")):
        table.add_row(fact, *(column[index] for column in columns))
    if warning := privacy.get("not_private"):
        table.caption = f"[bold red]{warning}[/]"
    return table


#: The shipped configs, where a checkout or an editable install has them.
CONFIGS = Path(__file__).resolve().parents[1] / "simulations" / "configs"


def tuned_config(dataset: str | None, model: str | None, kind: str = "centralized") -> Path | None:
    """The shipped config tuned for ``model`` on ``dataset``, if there is one (``kind``: its sub-folder)."""
    if not dataset or not model:
        return None
    path = CONFIGS / dataset / kind / f"{model}.toml"
    return path if path.is_file() else None


def command_train(args: argparse.Namespace) -> int:
    from recsys_core.experiment import ExperimentConfig, run_experiment

    if not args.config and (tuned := tuned_config(args.dataset, args.model)):
        # A model chosen by name starts from its measured settings for that dataset; flags and --set still win.
        console.print(f"Settings: {tuned.relative_to(CONFIGS.parents[1])} (tuned for {args.model} on {args.dataset}; "
                      "--set KEY=VALUE overrides any of them)", highlight=False)
        args.config = str(tuned)
    config = ExperimentConfig.from_dict(_config_values(args, TRAIN_FLAGS))
    console.print(f"Training [bold]{config.model.name}[/] on [bold]{config.data.dataset}[/] "
                  f"(seed {config.train.seed}); validation metric {config.train.validation_metric}")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("epochs", total=config.train.epochs, status="")

        def on_epoch(report: Any) -> None:
            status = f"loss {report.train_loss:.4f}"
            if report.validation:
                status += f"  valid {config.train.validation_metric} " \
                          f"{report.validation.get(config.train.validation_metric, float('nan')):.4f}"
            progress.update(task, completed=report.epoch, status=status)

        result = run_experiment(config, on_epoch=on_epoch)
    console.print(metrics_table(f"Test metrics: {config.model.name} on {config.data.dataset} "
                                f"(best epoch {result.training.best_epoch}), Popularity on the same test users",
                                result.training.test, result.summary["popularity_test"],
                                caption=f"[bold red]{NOT_PRIVATE}[/] (centralized training)"))
    timings = result.summary["timings_seconds"]
    console.print(f"train {timings['train']:.1f} s, evaluation {timings['evaluation']:.1f} s")
    console.print(f"Run directory: [bold]{result.run_directory}[/] (metrics.json, history.jsonl, model.pt)")
    return 0


def command_manifest(args: argparse.Namespace) -> int:
    """The data owner's step before ``flwr run``: what the server may know of the federation."""
    import dataclasses

    from recsys_core.federated.config import FederatedConfig
    from recsys_core.secure_aggregation.identity import read_authority_key
    from server.simulate import validate_before_start

    config = FederatedConfig.from_dict(_config_values(args, SIMULATE_FLAGS))
    with console.status(f"Reading {config.data.dataset} to describe its federation"):
        manifest = validate_before_start(config, run=False).manifest(config.data.dataset)
    if args.device_authority:
        manifest = dataclasses.replace(manifest, device_authority=read_authority_key(args.device_authority).hex())
    path = manifest.write(args.output)
    console.print(f"Federation manifest: [bold]{path}[/] ({manifest.num_partitions} devices, {manifest.n_items} "
                  f"items, at most {manifest.max_training_rows} training rows on a device). Hand it to the server: "
                  f"flwr run . --run-config 'config=\"{args.config or 'CONFIG'}\" manifest=\"{path}\"'",
                  highlight=False)
    return 0


def command_simulate(args: argparse.Namespace) -> int:
    from recsys_core.federated.config import FederatedConfig
    from recsys_core.federated.records import RoundRecord
    from server.simulate import run_federated_simulation

    if args.resume:
        from server.run_directory import NothingToResumeError, open_run_directory

        resumed, values = open_run_directory(args.resume, "--resume")
        config = FederatedConfig.from_dict(apply_overrides(values, resume_overrides(list(args.set or []))))
        try:  # checked here, before the data is read and Ray starts; the run checks it again
            resumed.resume_from(config.server.rounds)
        except NothingToResumeError as complete:
            console.print(escape(str(complete)), highlight=False, soft_wrap=True)
            return 0
    else:
        values = _config_values(args, SIMULATE_FLAGS)
        if not args.config and not args.dataset and not args.model:
            from recsys_core.federated.main_job import main_job_values

            # The main job: private item k-NN, with the flags and --set applied over it.
            values = _config_values(args, SIMULATE_FLAGS, main_job_values(_default_dataset(args.data_dir)))
        elif not args.config and not args.dataset:
            values = apply_overrides(values, [f"data.dataset={_quoted(_default_dataset(args.data_dir))}"])
        config = FederatedConfig.from_dict(values)
    console.print(f"Federated [bold]{config.model.name}[/] on [bold]{config.data.dataset}[/]: "
                  f"{config.server.rounds} rounds, {config.server.devices_per_round} devices per round, "
                  f"strategy {config.server.strategy}, {config.simulation.engine} engine")
    cohort = config.simulation.engine == "cohort"
    if config.privacy.enabled and config.privacy.noise_source != "os_entropy":
        from recsys_core.privacy.secrets import NOT_PRIVATE_WARNING

        console.print(f"[bold red]{NOT_PRIVATE_WARNING}[/]", highlight=False)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("rounds", total=config.server.rounds, status="reading the data")
        devices = progress.add_task("devices", total=None, status="", visible=False)
        exchange_names = {"train": "training", "valid": "validation", "test": "final test"}

        started: list[bool] = []

        def on_device(exchange: str, done: int, total: int) -> None:
            if not started:  # the first exchange has begun: the server has sent round 1
                started.append(True)
                progress.update(task, status=f"round 1 running on {total:,} devices" if cohort else
                                f"round 1 sent to {total:,} devices; the first replies wait for the workers to start")
            progress.update(devices, description=exchange_names.get(exchange, exchange), completed=done,
                            total=total, visible=done < total)

        def on_round(record: RoundRecord) -> None:
            status = f"{record.participants}/{record.sampled} devices"
            if record.failures:
                status += f" ({len(record.failures)} failed)"
            if record.declined:
                status += f" ({len(record.declined)} out of privacy budget)"
            if record.status != "aggregated":
                status += f" ({record.status})"
            if record.train_loss is not None:
                status += f"  loss {record.train_loss:.4f}"
            if record.validation:
                status += f"  valid ndcg@10 {record.validation.get('full/ndcg@10', float('nan')):.4f}"
            progress.update(task, completed=record.round, status=status)

        directory, summary = run_federated_simulation(config, run_dir=args.resume, resume=bool(args.resume),
                                                      on_round=on_round, verbose=args.verbose,
                                                      on_device=on_device,
                                                      on_phase=lambda phase: progress.update(task, status=phase))
    if summary.get("test"):
        not_private = summary.get("not_private")
        console.print(metrics_table(f"Federated test metrics: {config.model.name} on {config.data.dataset}, "
                                    f"all devices; Popularity on the same test users", summary["test"],
                                    summary.get("popularity_test"),
                                    caption=f"[bold red]{not_private}[/]" if not_private else None))
    if summary.get("privacy"):
        console.print(privacy_table(summary["privacy"]))
        console.print(f"Privacy ledger: {directory.path / summary['privacy']['ledger']} "
                      "(every schedule; a reviewer recomputes each epsilon from it alone)")
    if summary.get("secure_aggregation"):
        secure = summary["secure_aggregation"]
        console.print(f"Secure aggregation: the server saw only sums; {secure['rounds_failed']} rounds failed to "
                      f"unmask (model unchanged, see rounds.jsonl), {secure['clipped_coordinates_total']} update "
                      "coordinates clipped to secure_aggregation.update_clip_range")
    console.print(f"{summary['seconds_total']:.1f} s in rounds, {summary['failures_total']} device failures, "
                  f"{summary['bytes_up_total'] / 1e6:.1f} MB up, {summary['bytes_down_total'] / 1e6:.1f} MB down")
    console.print(f"Run directory: [bold]{directory.path}[/] (rounds.jsonl, summary.json, metrics.png, "
                  f"final-model/); continue an interrupted run with fedrec simulate --resume {directory.path}")
    if summary.get("record_chain_head"):
        head = summary["record_chain_head"]
        console.print(f"Record chain head: {head} (keep it outside the run directory; "
                      f"fedrec audit {directory.path} --expected-head {head} proves nothing was rewritten)",
                      highlight=False, soft_wrap=True)
    return 0


def _default_dataset(data_dir: str | None) -> str:
    """MovieLens 100K when its files are in the data directory, else the embedded synthetic data."""
    from recsys_core.data.registry import dataset_info

    return "ml-100k" if dataset_info("ml-100k", data_dir=data_dir, with_summary=False).get("present") else "synthetic"


def command_datasets(args: argparse.Namespace) -> int:
    from recsys_core.data.registry import dataset_info, download_dataset, list_datasets

    if args.action == "list":
        table = Table(title="Datasets")
        table.add_column("name")
        table.add_column("description")
        table.add_column("present")
        for spec in list_datasets():
            info = dataset_info(spec.name, data_dir=args.data_dir)
            table.add_row(spec.name, spec.description, "yes" if info.get("present") else "no")
        console.print(table)
        console.print("Details: fedrec datasets info NAME; fetch: fedrec datasets download NAME")
        return 0
    if not args.name:
        raise FedrecError(f"fedrec datasets {args.action}: name a dataset, e.g. ml-100k")
    if args.action == "info":
        console.print(dataset_info_table(dataset_info(args.name, data_dir=args.data_dir)))
        return 0
    path = download_dataset(args.name, data_dir=args.data_dir)
    console.print(f"{args.name} is ready in {path}")
    return 0


def dataset_info_table(info: dict[str, Any]) -> Table:
    """``fedrec datasets info`` as a two-column table: nested values one per line, empty ones left out."""
    table = Table(title=f"Dataset {info.get('name', '')}", show_header=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    for key, value in info.items():
        if key == "name" or value in ({}, [], "", None):
            continue
        if isinstance(value, dict):
            value = "\n".join(f"{inner}: {_readable(item)}" for inner, item in value.items())
        table.add_row(key, _readable(value))
    return table


def _readable(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def command_deploy(args: argparse.Namespace) -> int:
    from server.deploy import make_credentials

    hosts = args.host or ["127.0.0.1", "localhost"]
    credentials = make_credentials(args.output_dir, hosts, args.supernodes)
    folder = credentials.ca_certificate.parent
    console.print(f"Wrote a CA, a SuperLink certificate for {', '.join(hosts)}, {args.supernodes} SuperNode key "
                  f"pairs, a device authority and {args.supernodes} device identities it certified to {folder}.")
    console.print("Next: give superlink.crt/.key and ca.crt to the SuperLink; to each SuperNode ca.crt, one "
                  "supernode-N private key, its supernode-N.identity and device-authority.pub (node config "
                  "identity-path and device-authority); register each supernode-N.pub with "
                  "`flwr supernode register`; put device-authority.pub in the federation manifest "
                  "(docs/deployment.md). Keep ca.key and device-authority.key away from the server.")
    return 0


def command_audit(args: argparse.Namespace) -> int:
    from server.audit import REPORT_FILE, AuditOptions, audit_run, checked_head

    expected_head = checked_head(args.expected_head)  # before any audit work
    with Progress(SpinnerColumn(), TextColumn("Auditing: {task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        phase = progress.add_task("reading the run", total=None)
        result = audit_run(args.run_dir, AuditOptions(expected_head=expected_head,
                                                      item_set_devices=args.item_set_devices,
                                                      data_dir=args.data_dir),
                           on_phase=lambda text: progress.update(phase, description=text))
    table = Table(title=f"Privacy audit of {args.run_dir}")
    table.add_column("part")
    table.add_column("result")
    integrity = result["integrity"]
    table.add_row("integrity", "intact" if integrity["passed"] else f"{len(integrity['problems'])} problems")
    checks = result["formal"]["checks"]
    failed = [check for check in checks if not check["passed"]]
    table.add_row("formal checks", f"{len(checks) - len(failed)} of {len(checks)} hold" if checks else "no ledger")
    canaries = result["canaries"]
    if canaries.get("planted"):
        for view in ("released_model", "server_view"):
            audit = canaries[view]
            table.add_row(f"canary epsilon lower bound, {view.replace('_', ' ')}",
                          f"{audit['epsilon_lower_bound']:.3f} (claimed {audit['claimed_epsilon']:.3g}; "
                          f"membership AUC {audit['membership']['calibrated']['auc']:.3f})")
    else:
        table.add_row("canaries", "none planted: fedrec simulate --audit-canaries M gives an empirical bound")
    item_set = result["item_set"]

    def best(values: dict[str, Any]) -> float:
        guesses = (values["top_k_precision"], values.get("largest_k_precision", float("nan")))
        return max(guess for guess in guesses if guess == guess)  # NaN: a guess the audit did not make

    if item_set is None:
        table.add_row("item-set precision", "not measured: the released model fails its integrity check")
    else:
        view = item_set[item_set["server_view"]]
        row = f"{best(view):.3f} vs chance {view['chance_precision']:.3f}"
        if item_set["server_view"] == "aggregate" and "aggregate_without_user" in item_set:
            row += f" ({best(item_set['aggregate_without_user']):.3f} from the sum without the user)"
        table.add_row(f"item-set precision ({item_set['server_view']} updates)", row)
    table.add_row("verdict", f"[bold]{result['verdict']['result']}[/]")
    console.print(table)
    for reason in result["verdict"]["reasons"]:
        console.print(f"- {reason}", highlight=False)
    console.print(f"Report: {Path(args.run_dir) / REPORT_FILE} (and audit.json, audit.png)")
    return 0 if result["verdict"]["result"] == "PASS" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec", description="Federated, private deep recommenders.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model centrally (the non-federated baseline)")
    train.add_argument("--config", help="TOML file with [data], [model], [train], [evaluation] tables")
    train.add_argument("--dataset", help="dataset name (fedrec datasets list), 'synthetic' or 'file'")
    train.add_argument("--data-dir", help="folder holding datasets (default: $FEDREC_DATA_DIR)")
    train.add_argument("--download", action="store_true", help="download a missing dataset")
    train.add_argument("--model", help=f"model name: {', '.join(MODELS)}")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--output-dir", help="where run directories go (default: runs)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override any config key, e.g. --set train.learning_rate=0.01")
    train.set_defaults(handler=command_train)

    simulate = commands.add_parser("simulate", help="federated simulation on Flower's simulation engine")
    simulate.add_argument("--config", help="TOML file, e.g. simulations/configs/synthetic/neumf.toml")
    simulate.add_argument("--dataset", help="dataset name, 'synthetic' or 'file'")
    simulate.add_argument("--data-dir", help="folder holding datasets (default: $FEDREC_DATA_DIR)")
    simulate.add_argument("--model", help=f"model name: {', '.join(MODELS)}")
    simulate.add_argument("--rounds", type=int)
    simulate.add_argument("--devices-per-round", type=int)
    simulate.add_argument("--seed", type=int)
    simulate.add_argument("--output-dir", help="where run directories go (default: runs)")
    simulate.add_argument("--engine", choices=("flower", "cohort"),
                          help="flower (default): Flower's simulation engine, the deployment's code path; cohort: "
                               "every device in this process, for large federations (simulation.engine)")
    simulate.add_argument("--not-private", dest="not_private", action="store_const", const=False,
                          help="run without fedrec's protection (DP, secure aggregation) where the config has none: "
                               "sets private = false, and the results say NOT PRIVATE")
    simulate.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last completed round")
    simulate.add_argument("--audit-canaries", type=int, metavar="M",
                          help="plant M canary interactions, each with probability 1/2, for fedrec audit")
    simulate.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    simulate.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override any config key, e.g. --set server.strategy=fedadam")
    simulate.set_defaults(handler=command_simulate)

    manifest = commands.add_parser("manifest", help="the federation manifest the server reads under flwr run "
                                                    "(the data owner's step; fedrec simulate writes its own)")
    manifest.add_argument("--config", help="TOML file, e.g. simulations/configs/ml-100k/neumf.toml")
    manifest.add_argument("--dataset", help="dataset name, 'synthetic' or 'file'")
    manifest.add_argument("--data-dir", help="folder holding datasets (default: $FEDREC_DATA_DIR)")
    manifest.add_argument("--audit-canaries", type=int, metavar="M", help="plant M canary interactions")
    manifest.add_argument("--output", default="federation.json", help="where to write it (default: federation.json)")
    manifest.add_argument("--device-authority", metavar="FILE",
                          help="device-authority.pub from fedrec deploy certs: the server then registers only "
                               "devices it enrolled for secure aggregation")
    manifest.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")
    manifest.set_defaults(handler=command_manifest)

    audit = commands.add_parser("audit", help="audit a run: integrity, formal recomputation, empirical attacks")
    audit.add_argument("run_dir", metavar="RUN_DIR")
    audit.add_argument("--expected-head", help="the record chain head the run printed, kept outside the run directory")
    audit.add_argument("--item-set-devices", type=int, default=50, help="devices whose updates the item-set attack "
                                                                         "targets")
    audit.add_argument("--data-dir", help="where the reviewer's copy of the dataset is, if not where the run found it")
    audit.set_defaults(handler=command_audit)

    deploy = commands.add_parser("deploy", help="credentials for a real deployment (docs/deployment.md)")
    deploy.add_argument("action", choices=("certs",))
    deploy.add_argument("--output-dir", default="certificates", help="folder for the credentials (must not hold any)")
    deploy.add_argument("--host", action="append", default=None,
                        help="host the SuperLink is reached at (repeat for several; default 127.0.0.1 and localhost)")
    deploy.add_argument("--supernodes", type=int, default=3, help="SuperNode key pairs to make")
    deploy.set_defaults(handler=command_deploy)

    datasets = commands.add_parser("datasets", help="list, inspect or download datasets")
    datasets.add_argument("action", choices=("list", "info", "download"))
    datasets.add_argument("name", nargs="?")
    datasets.add_argument("--data-dir", help="folder holding datasets (default: $FEDREC_DATA_DIR)")
    datasets.set_defaults(handler=command_datasets)
    return parser


#: What ``--set`` may change when a run resumes: its length, and how this machine runs it. Anything
#: else (the seed, the model, the privacy settings) would make the records and the ledger describe a
#: run that did not happen.
RESUMABLE_KEYS = ("server.rounds", "data.data_dir", "simulation.max_workers", "simulation.cohort_threads",
                  "simulation.num_cpus_per_device", "simulation.torch_threads_per_device")


def resume_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` if each names a key a resumed run may change; else one error naming the first that does not."""
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUMABLE_KEYS:
            raise ConfigError(f"--set {key}: a resumed run keeps the settings it started with (config.json); only "
                              f"{', '.join(RESUMABLE_KEYS)} may change on --resume. Start a new run to change {key}")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except FedrecError as error:
        # Escaped: a path, column name or value in the message may look like rich markup ("[parquet]").
        error_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        error_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
