"""``fedrec audit RUN_DIR``: what a training run guaranteed, and whether the evidence supports it.

Four parts, each in ``audit.json`` and the human-readable ``audit.md`` (with ``audit.png``):

1. **Integrity**: the hash chain over ``config.json``, ``rounds.jsonl`` and the privacy
   ledger (:mod:`recsys_core.audit.hash_chain`).
2. **Formal**: every epsilon recomputed by two accountants, and the ledger checked
   against the logged mechanism (:mod:`recsys_core.audit.formal`).
3. **Empirical**: the one-run canary audit, membership inference on the canaries, and
   item-set inference against client updates.
4. **Verdict**: PASS when the chain is intact, every formal check holds and the
   empirical epsilon lower bound is at most the smallest claimed epsilon.

The maths lives in ``recsys_core.audit``; this module reads a run directory and runs it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_core.audit.canaries import CANARIES_FILE, CanaryPlan, without_canaries
from recsys_core.audit.formal import (
    DEVICE_ACCOUNTANTS_CHECK,
    Check,
    check_against_log,
    check_device_accountants,
    guarantee_statement,
    recompute_with_two_accountants,
)
from recsys_core.audit.item_set import (
    ItemSetGuess,
    attack_update,
    item_rows,
    positive_side_scores,
    summarise,
    summed,
    touched_rows,
)
from recsys_core.audit.statistics import best_guess_epsilon_lower_bound, clopper_pearson, roc_auc, tpr_at_fpr
from recsys_core.bundle import BundleError, read_bundle
from recsys_core.data.splits import DatasetSplit
from recsys_core.errors import FedrecError
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData, load_federated_data
from recsys_core.federated.device import SimulatedDeviceError, refit_private_parameters, train_on_device
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.manifest import MANIFEST_FILE
from recsys_core.federated.state import state_to_arrays
from recsys_core.models import CatalogInfo, Recommender, build_model, model_class
from recsys_core.privacy.ledger import PrivacyLedger
from recsys_core.run_records import write_json
from server.run_directory import RunDirectory, open_run_directory

AUDIT_FILE = "audit.json"
REPORT_FILE = "audit.md"
PLOT_FILE = "audit.png"
#: delta of the canary bound when the run claims none (no DP): the usual 1e-5.
DEFAULT_AUDIT_DELTA = 1e-5
MEMBERSHIP_FPR = 0.001
#: How the auditor refits a canary user's private parameters (a device's refit, done longer).
REFIT_EPOCHS, REFIT_LEARNING_RATE, REFIT_BATCH_SIZE = 10, 0.05, 256
#: Seeds the refit; not a real partition.
AUDIT_PARTITION_TAG = 2**31 - 2

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class AuditOptions:
    """How to audit: the head hash kept outside the run, the attack sizes, where the data is."""

    expected_head: str | None = None
    item_set_devices: int = 50
    confidence: float = 0.95
    seed: int = 0
    #: A reviewer's copy of the datasets, if not where the run found them.
    data_dir: str | None = None


def checked_head(text: str | None) -> str | None:
    """The ``--expected-head`` given, if it is one: 64 hex digits as the run printed them (case ignored)."""
    if text is None:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()) is None:
        raise FedrecError(f"--expected-head: not a 64-hex-digit record chain head: {text!r}; pass the head the "
                          "run printed as its last line")
    return text.strip().lower()


def checked_attack_size(devices: object) -> int:
    """``--item-set-devices``, if it is a count the item-set attack can use: an integer of at least 1."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise FedrecError(f"--item-set-devices: the item-set attack needs at least 1 device, got {devices!r}")
    return devices


#: Told each phase of an audit as it starts, and each device replayed, for a progress line.
AuditProgress = Callable[[str], None]


def audit_run(run_dir: str | Path, options: AuditOptions = AuditOptions(),
              on_phase: AuditProgress | None = None) -> dict[str, Any]:
    """Audits one run directory, writes ``audit.json``, ``audit.md`` and ``audit.png`` into it.

    ``on_phase`` hears what the audit is doing: its phases, and each device whose update it replays
    (the replays are most of an audit's time).
    """
    say: AuditProgress = on_phase or (lambda _: None)
    options = replace(options, expected_head=checked_head(options.expected_head),
                      item_set_devices=checked_attack_size(options.item_set_devices))
    directory, config_values = open_run_directory(run_dir, "fedrec audit")  # creates nothing, names what is wrong
    config_path = directory.path / "config.json"
    if options.data_dir is not None:
        config_values["data"]["data_dir"] = options.data_dir
    config = FederatedConfig.from_dict(config_values)
    ledger, ledger_problem = directory.read_ledger()

    result: dict[str, Any] = {"run_directory": str(directory.path)}
    say("integrity: checking the record chain")
    result["integrity"] = directory.verify_integrity(options.expected_head)
    try:  # the checkpoint is what --resume continues from: one that contradicts itself is tampering too
        directory.read_checkpoint()
    except FedrecError as error:
        _integrity_problem(result, str(error))
    formal_checks: list[Check] = []
    say("formal checks: recomputing epsilon with two accountants")
    if ledger is not None:
        formal_checks = recompute_with_two_accountants(ledger, str(directory.ledger_file))
        try:
            rounds = directory.read_rounds()
        except FedrecError as error:
            formal_checks.append(Check("round records follow the schema", False, str(error)))
        else:
            formal_checks += check_against_log(ledger, json.loads(config_path.read_text(encoding="utf-8")), rounds)
        if ledger.local is not None:
            formal_checks += _device_spend_checks(directory, ledger)
    elif ledger_problem:
        formal_checks = [Check("privacy ledger readable", False, ledger_problem)]
    claims = _claims(ledger, config)
    result["formal"] = {
        "checks": [asdict(check) for check in formal_checks],
        "statement": guarantee_statement(ledger, config.secure_aggregation.enabled) if ledger else
        ["No differential privacy: the run claims no epsilon (epsilon = infinity)."],
        "claims": claims,
        "accountant_libraries": {name: metadata.version(name) for name in ("opacus", "dp-accounting")}}

    say("reading the data and the released model")
    bundle_path = directory.path / "final-model"
    if not bundle_path.exists():
        raise FedrecError(f"{directory.path}: has no final-model/, so the run has not finished (or its model was "
                          f"removed); finish it with `fedrec simulate --resume {directory.path}`, then audit it")
    try:
        bundle = read_bundle(bundle_path)
    except BundleError as error:
        # The released model was damaged or edited after the run wrote it: an integrity failure of this run,
        # and nothing the empirical attacks could measure.
        _integrity_problem(result, f"final-model/ (the released model) fails its check: {error}")
        result["canaries"] = {"planted": 0, "note": "not measured: the released model fails its integrity check"}
        result["item_set"] = None
    else:
        data = load_federated_data(config.data, config.partition)
        if not data.manifest(config.data.dataset).written_at(directory.path / MANIFEST_FILE):
            # The server trusted its bounds (a device's largest example count) while the run went on.
            _integrity_problem(result, f"{MANIFEST_FILE}: does not match the federation the data gives: edited "
                                       "after the run, or the data changed")
        result["canaries"] = _canary_audit(directory.path, config, data, bundle.shared_parameters, claims,
                                           options.confidence, say)
        result["item_set"] = _item_set_audit(config, data, bundle.shared_parameters, options, say)
    say("writing audit.json, audit.md and audit.png")
    result["verdict"] = _verdict(result, formal_checks, claims)
    write_json(directory.path / AUDIT_FILE, result)
    _write_plot(directory.path / PLOT_FILE, result)
    (directory.path / REPORT_FILE).write_text(report_markdown(result), encoding="utf-8")
    return result


def _integrity_problem(result: dict[str, Any], problem: str) -> None:
    """Adds a problem the record chain cannot see (a file outside it) to the integrity verdict."""
    result["integrity"]["passed"] = False
    result["integrity"]["problems"].append(problem)


def _device_spend_checks(directory: RunDirectory, ledger: PrivacyLedger) -> list[Check]:
    """The simulated devices' own accountants against the ledger (none when devices kept their state elsewhere)."""
    try:
        accountants = directory.device_accountants()
    except (FedrecError, ValueError) as error:
        return [Check(DEVICE_ACCOUNTANTS_CHECK, False, f"cannot read the devices' state: {error}")]
    return [] if accountants is None else [check_device_accountants(ledger, accountants)]


#: The two things an observer may hold, and whose guarantee covers each.
RELEASED_MODEL, SERVER_VIEW = "released_model", "server_view"


def _claims(ledger: PrivacyLedger | None, config: FederatedConfig) -> dict[str, dict[str, Any]]:
    """For each view, the smallest claimed epsilon that covers one interaction in it, with its delta.

    The released model is covered by every claim. What the server sees of one round is
    covered by local DP (each device's update is its DP-SGD output) and, under secure
    aggregation, by user-level DP with distributed noise (the sum carries all the noise);
    central noise is added after the server has seen the updates, so it covers nothing there.
    """
    local = None if ledger is None or ledger.local is None else (ledger.local.epsilon.maximum, ledger.local.delta,
                                                                   "local DP (worst device)")
    user = None if ledger is None or ledger.user_level is None else (
        ledger.user_level.epsilon.claimed_epsilon, ledger.user_level.epsilon.delta, "user-level DP")
    distributed = user is not None and ledger is not None and ledger.user_level is not None \
        and ledger.user_level.noise_placement == "distributed" and config.secure_aggregation.enabled
    views = {RELEASED_MODEL: [claim for claim in (local, user) if claim],
             SERVER_VIEW: [claim for claim in (local, user if distributed else None) if claim]}
    result = {}
    for view, claims in views.items():
        epsilon, delta, source = min(claims) if claims else (math.inf, DEFAULT_AUDIT_DELTA, "no claim covers it")
        result[view] = {"epsilon": epsilon, "delta": delta, "claim": source}
    return result


# --- empirical: canaries and membership ---------------------------------------------------------------------------


def _scoring_model(config: FederatedConfig, data: FederatedData, shared: Arrays, history: Any) -> Recommender:
    """The released model, with each canary user's private parameters refit to their non-canary data.

    The server never receives private parameters (a user embedding). The auditor fits
    them again on the released shared parameters, from what it knows without the
    canaries (the user's other interactions), as a device does after a new model
    arrives; that is post-processing of the release, so any guarantee of the release
    covers it. Models without private parameters read the history directly.
    """
    model = build_model(config.model.name, CatalogInfo.from_log(data.split.train), config.model.options)
    tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in shared.items()}
    tensors.update({name: torch.zeros_like(value) for name, value in model.private_state().items()})
    model.load_state_dict(tensors, strict=False)
    refit = replace(config, local=replace(config.local, private_refit_epochs=REFIT_EPOCHS,
                                          private_learning_rate=REFIT_LEARNING_RATE, batch_size=REFIT_BATCH_SIZE))
    model.train()
    refit_private_parameters(refit, model, DatasetSplit(history, history, history), AUDIT_PARTITION_TAG)
    return model.eval()


def canary_scores(model: Recommender, plan: CanaryPlan, history: Any, batch: int = 256) -> np.ndarray:
    """Each canary's score: the model's score of the canary's item for the canary's user."""
    scores = np.zeros(plan.count)
    with torch.no_grad():
        for start in range(0, plan.count, batch):
            users = plan.users[start:start + batch]
            rows = model.score(users, history)
            scores[start:start + batch] = rows[np.arange(len(users)), plan.items[start:start + batch]].numpy()
    return scores


def _canary_audit(path: Path, config: FederatedConfig, data: FederatedData, shared: Arrays,
                  claims: dict[str, dict[str, Any]], confidence: float, say: AuditProgress) -> dict[str, Any]:
    """The one-run audit twice: on the released model, and on what the server sees of one round."""
    plan = data.canaries
    if plan is None:
        return {"planted": 0, "note": "no canaries: run fedrec simulate --audit-canaries M for an empirical bound"}
    recorded = json.loads((path / CANARIES_FILE).read_text(encoding="utf-8"))
    if recorded != json.loads(json.dumps(plan.to_dict(data.split.train))):
        raise FedrecError(f"{path / CANARIES_FILE}: does not match the canaries the config draws; the record was "
                          "edited, or the data differs from the run's")
    say(f"canaries: scoring {plan.count} canaries on the released and the initial model")
    known = without_canaries(data.split.train, plan)
    history = known.select(np.isin(known.user_ids, plan.users))
    final = canary_scores(_scoring_model(config, data, shared, history), plan, history)
    initial_model = build_device_model(config, data.catalog, 1, 0)
    initial = canary_scores(_scoring_model(config, data, state_to_arrays(initial_model.shared_state()), history),
                            plan, history)
    # Difficulty calibration (Watson et al., 2022): how far training moved the score, not where it ended.
    released = _one_run(final - initial, plan, claims[RELEASED_MODEL], confidence)
    released["score"] = ("final minus initial model score of the canary's item for its user, the user's private "
                         "parameters refit to their non-canary data")
    released["membership"]["loss_threshold"] = _membership(final[plan.included], final[~plan.included])
    secure = config.secure_aggregation.enabled
    server = _one_run(_server_view_scores(config, data, shared, plan, say), plan, claims[SERVER_VIEW], confidence)
    server["score"] = ("how far the canary's item row moved towards its user's positives in the update the server "
                       "sees of one more round from the final model: " + (
                           "the secure sum over groups of devices_per_round canary devices" if secure else
                           "each canary device's own update"))
    return {"planted": plan.count, "inserted": plan.inserted, "included": int(plan.included.sum()),
            RELEASED_MODEL: released, SERVER_VIEW: server}


def _one_run(scores: np.ndarray, plan: CanaryPlan, claim: dict[str, Any], confidence: float) -> dict[str, Any]:
    guess = best_guess_epsilon_lower_bound(scores, plan.included, claim["delta"], confidence)
    return {"epsilon_lower_bound": guess.epsilon_lower_bound, "claimed_epsilon": claim["epsilon"],
            "claim": claim["claim"], "delta": claim["delta"], "confidence": confidence, "guesses": guess.guesses,
            "correct": guess.correct, "settings_tried": guess.settings_tried,
            # The guesses' accuracy with its exact interval: the figure behind the bound, in plain terms.
            "accuracy_interval": clopper_pearson(guess.correct, guess.guesses, confidence) if guess.guesses else None,
            "membership": {"calibrated": _membership(scores[plan.included], scores[~plan.included])},
            "scores": scores.tolist(), "included": plan.included.astype(bool).tolist()}


def _server_view_scores(config: FederatedConfig, data: FederatedData, shared: Arrays,
                        plan: CanaryPlan, say: AuditProgress) -> np.ndarray:
    """Each canary's score in what the server sees when its device trains once more from the final model.

    Rows its device did not touch score below every touched row. Under secure aggregation
    the canary devices are summed in groups of ``devices_per_round`` (canary items are
    distinct, so each canary is scored on its own item's row of its group's sum).
    """
    n_items = data.catalog.n_items
    partitions = [int(data.partitioners[0].assignment[user]) for user in plan.users.tolist()]
    updates = _replayed_updates(config, data, shared, partitions, say, "canaries, server's view")
    scores = np.full(plan.count, -np.inf)
    group = config.server.devices_per_round if config.secure_aggregation.enabled else 1
    order = np.random.default_rng([config.seed, 0xA0D2]).permutation(plan.count)
    for start in range(0, plan.count, group):
        members = [index for index in order[start:start + group] if updates[index] is not None]
        if not members:
            continue
        rows = item_rows(summed([update for index in members if (update := updates[index]) is not None]),
                         n_items)
        scores[members] = positive_side_scores(rows, touched_rows(rows))[plan.items[members]]
    finite = scores[np.isfinite(scores)]
    floor = (finite.min() - 1.0) if finite.size else 0.0
    return np.where(np.isfinite(scores), scores, floor)


def _membership(members: np.ndarray, nonmembers: np.ndarray) -> dict[str, Any]:
    return {"auc": roc_auc(members, nonmembers), "tpr_at_fpr_0.1%": tpr_at_fpr(members, nonmembers, MEMBERSHIP_FPR),
            "members": len(members), "nonmembers": len(nonmembers)}


# --- empirical: item-set inference ------------------------------------------------------------------------------


#: What an item-set attacker may see: one update, the securely aggregated sum, and the sum less the user.
ITEM_SET_VIEWS = ("raw", "aggregate", "aggregate_without_user")


def _replayed_updates(config: FederatedConfig, data: FederatedData, shared: Arrays, partitions: list[int],
                      say: AuditProgress, what: str) -> list[Arrays | None]:
    """:func:`_one_update` of each partition in turn, telling ``say`` which device of how many it replays."""
    updates = []
    for done, partition in enumerate(partitions):
        say(f"{what}: replaying device {done + 1:,} of {len(partitions):,} (one more round from the final model)")
        updates.append(_one_update(config, data, shared, partition))
    return updates


def _one_update(config: FederatedConfig, data: FederatedData, shared: Arrays, partition: int) -> Arrays | None:
    """What one device would send in one more round from the final model; None if it would send nothing."""
    split = data.device_split(partition)
    if split.train.n_interactions == 0:
        return None
    server_round = config.server.rounds + 1
    if not model_class(config.model.name).trains_with_gradients:
        # A counting model's item-indexed release is its first (the item counts), sent from the initial zeros.
        server_round, shared = 1, {name: np.zeros_like(value) for name, value in shared.items()}
    try:
        outcome = train_on_device(config, split, shared, None, server_round, partition)
    except SimulatedDeviceError:  # a device the config makes fail sends nothing
        return None
    if outcome.declined:
        return None
    if outcome.clipped_update is not None:
        return outcome.clipped_update
    return {name: np.asarray(outcome.shared_parameters[name], dtype=np.float64) - shared[name] for name in shared}


def _client_updates(config: FederatedConfig, data: FederatedData, shared: Arrays,
                    options: AuditOptions, say: AuditProgress) -> list[tuple[Arrays, np.ndarray]]:
    """Updates of randomly chosen clients, each with its true training items."""
    generator = np.random.default_rng([options.seed, 0xA0D1])
    count = min(options.item_set_devices, data.num_devices)
    partitions = np.sort(generator.choice(data.num_devices, size=count, replace=False)).tolist()
    updates = _replayed_updates(config, data, shared, partitions, say, "item-set attack")
    return [(update, data.device_split(partition).train.item_ids)
            for partition, update in zip(partitions, updates, strict=True) if update is not None]


def _item_set_audit(config: FederatedConfig, data: FederatedData, shared: Arrays,
                    options: AuditOptions, say: AuditProgress) -> dict[str, Any]:
    n_items = data.catalog.n_items
    updates = _client_updates(config, data, shared, options, say)
    raw = [attack_update(item_rows(update, n_items), items) for update, items in updates]
    group = max(1, min(config.server.devices_per_round, len(updates)))
    aggregated: list[ItemSetGuess] = []
    without_user: list[ItemSetGuess] = []
    for start in range(0, len(updates) - group + 1, group):
        members = updates[start:start + group]
        total = summed([update for update, _ in members])
        rows = item_rows(total, n_items)
        aggregated += [attack_update(rows, items) for _, items in members]
        # The same guess from the sum without the user: what the others' data alone gives away about
        # them (popular items are in most users' sets); the user's own leak is the difference.
        without_user += [attack_update(item_rows({name: total[name] - update[name] for name in total}, n_items), items)
                         for update, items in members]
    secure = config.secure_aggregation.enabled
    return {
        "devices": len(updates), "aggregate_size": group,
        "server_view": "aggregate" if secure else "raw",
        **{view: asdict(summary) | {"top_k_over_chance": summary.top_k_over_chance}
           for view, summary in (("raw", summarise(raw)), ("aggregate", summarise(aggregated)),
                                 ("aggregate_without_user", summarise(without_user)))},
        "note": ("Updates are what each client would send in one more round from the final model (a model fitted "
                 "by counting: its first, item-indexed release), with this run's training, clipping and noise "
                 "settings; 'aggregate' is their sum over groups of devices_per_round, which is all a server sees "
                 "under secure aggregation, and 'aggregate without the user' the same sum less the attacked "
                 "user's update, the baseline of what the others' data alone reveals"),
    }


# --- verdict and report -----------------------------------------------------------------------------------------


def _verdict(result: dict[str, Any], checks: list[Check], claims: dict[str, dict[str, Any]]) -> dict[str, Any]:
    reasons = [f"integrity: {problem}" for problem in result["integrity"]["problems"]]
    reasons += [f"formal: {check.name}: {check.detail}" for check in checks if not check.passed]
    for view in (RELEASED_MODEL, SERVER_VIEW):
        audit = result["canaries"].get(view)
        if audit is not None and audit["epsilon_lower_bound"] > audit["claimed_epsilon"]:
            reasons.append(f"empirical: the canary lower bound on the {view.replace('_', ' ')} "
                           f"{audit['epsilon_lower_bound']:.3g} exceeds the claimed {audit['claimed_epsilon']:.3g}")
    note = None
    if all(math.isinf(claim["epsilon"]) for claim in claims.values()):
        note = "the run claims no differential privacy; the empirical figures measure its leakage"
    return {"result": "FAIL" if reasons else "PASS", "reasons": reasons, "note": note}


def report_markdown(result: dict[str, Any]) -> str:
    """The human-readable report."""
    verdict = result["verdict"]
    lines = [f"# Privacy audit: {verdict['result']}", "", f"Run: `{result['run_directory']}`", ""]
    if verdict["reasons"]:
        lines += ["## Why it fails", "", *[f"- {reason}" for reason in verdict["reasons"]], ""]
    if verdict["note"]:
        lines += [f"Note: {verdict['note']}.", ""]
    lines += ["## The guarantee", "", *[f"{statement}\n" for statement in result["formal"]["statement"]]]
    integrity = result["integrity"]
    lines += ["## Integrity", "", f"{integrity['rounds']} round records; chain head `{integrity['head']}`"
              + (" (checked against the expected head)" if integrity["expected_head_checked"] else
                 " (pass --expected-head to check it against a copy kept elsewhere)") + ".", ""]
    lines += [f"- {problem}" for problem in integrity["problems"]] or ["- chain intact"]
    lines += ["", "## Formal checks", "", "| check | result | evidence |", "|---|---|---|"]
    lines += [f"| {check['name']} | {'pass' if check['passed'] else 'FAIL'} | {check['detail']} |"
              for check in result["formal"]["checks"]] or ["| (no privacy ledger) | | |"]
    canaries = result["canaries"]
    lines += ["", "## Canaries (one-run audit, Steinke, Nasr & Jagielski 2023)", ""]
    if canaries.get("planted"):
        lines += [f"{canaries['planted']} canaries, {canaries['included']} included by coin"
                  + ("" if canaries["inserted"] else ", none inserted (null control)") + ". Guess settings are "
                  "Bonferroni-corrected; bounds at the stated confidence.", "",
                  "| observer | score | right / guesses | epsilon lower bound | claimed (which claim) | "
                  "membership AUC | TPR at FPR 0.1% |", "|---|---|---:|---:|---|---:|---:|"]
        for view in (RELEASED_MODEL, SERVER_VIEW):
            audit = canaries[view]
            membership = audit["membership"]["calibrated"]
            interval = audit.get("accuracy_interval")
            accuracy = f" (accuracy {interval[0]:.2f}-{interval[1]:.2f})" if interval else ""
            lines.append(f"| {view.replace('_', ' ')} | {audit['score']} | {audit['correct']} / {audit['guesses']}"
                         f"{accuracy} | "
                         f"**{audit['epsilon_lower_bound']:.3f}** (delta {audit['delta']:g}, "
                         f"{audit['confidence']:.0%}) | {audit['claimed_epsilon']:.3g} ({audit['claim']}) | "
                         f"{membership['auc']:.3f} | {membership['tpr_at_fpr_0.1%']:.3f} |")
        loss = canaries[RELEASED_MODEL]["membership"]["loss_threshold"]
        lines += ["", f"Loss-threshold membership attack on the released model (final score, uncalibrated): AUC "
                      f"{loss['auc']:.3f}, TPR at FPR 0.1% {loss['tpr_at_fpr_0.1%']:.3f} ({loss['members']} members, "
                      f"{loss['nonmembers']} non-members; with fewer than 1000 non-members FPR 0.1% means none)."]
    else:
        lines.append(canaries["note"])
    item_set = result["item_set"]
    if item_set is None:
        return "\n".join([*lines, "", "## Item-set inference against client updates", "",
                           "Not run: the released model fails its integrity check.", ""])
    lines += ["", "## Item-set inference against client updates", "", item_set["note"] + ".", "",
              "Accuracy intervals are exact (Clopper-Pearson) at the audit's confidence.", "",
              "| what the attacker sees | users | top-k precision | chance | ratio | largest-k precision | "
              "touched precision | touched recall |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for view in ITEM_SET_VIEWS:
        values = item_set[view]
        label = view.replace("_", " ") + (" (this run's server view)" if item_set["server_view"] == view else "")
        lines.append(f"| {label} | {values['users']} | {values['top_k_precision']:.3f} | "
                     f"{values['chance_precision']:.3f} | {values['top_k_over_chance']:.1f} | "
                     f"{values.get('largest_k_precision', float('nan')):.3f} | "
                     f"{values['touched_precision']:.3f} | {values['touched_recall']:.3f} |")
    lines += ["", f"![canary scores and item-set precision]({PLOT_FILE})", ""]
    return "\n".join(lines)


def _write_plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (canary_axis, item_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for view, color in ((RELEASED_MODEL, "tab:blue"), (SERVER_VIEW, "tab:orange")):
        audit = result["canaries"].get(view)
        if audit:
            values, included = np.asarray(audit["scores"]), np.asarray(audit["included"], dtype=bool)
            order = np.argsort(-values, kind="stable")
            # Cumulative accuracy of the top-k "included" guesses: what the one-run bound is built from.
            accuracy = np.cumsum(included[order]) / np.arange(1, len(order) + 1)
            canary_axis.plot(np.arange(1, len(order) + 1), accuracy, color=color, label=view.replace("_", " "))
    canary_axis.axhline(0.5, color="grey", linestyle=":", label="chance")
    canary_axis.legend()
    canary_axis.set(title="canaries: accuracy of the top-k guesses", xlabel="k (guesses of 'included')",
                    ylabel="fraction right")
    views = ITEM_SET_VIEWS
    item_set = result["item_set"] or {view: {"top_k_precision": 0.0, "chance_precision": 0.0} for view in views}
    positions = np.arange(len(views))
    item_axis.bar(positions - 0.2, [item_set[view]["top_k_precision"] for view in views], 0.4, label="attack")
    item_axis.bar(positions + 0.2, [item_set[view]["chance_precision"] for view in views], 0.4, label="chance")
    item_axis.set_xticks(positions, [view.replace("_", " ").replace("aggregate without user", "without user")
                                     for view in views])
    item_axis.set(title="item-set inference: top-k precision")
    item_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
