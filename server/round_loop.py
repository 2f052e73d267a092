"""The server's round loop, whatever carries its messages: sample, exchange, apply, evaluate, record, checkpoint.

Sampling is over *partitions* with a generator seeded by ``(seed, round)``, and
updates are summed in partition order, so a run resumed from its last checkpoint
continues exactly as an uninterrupted run would. An engine supplies three things
(:class:`RoundLoop`'s abstract methods): which partitions are there, one round's
training exchange (ending in a :class:`~recsys_core.federated.aggregation.RoundSum`)
and federated evaluation. Everything after the exchange, gates, noise and the server
step, is :func:`~recsys_core.federated.aggregation.apply_round`, and the run directory,
ledger and record chain are written here, so every engine leaves the same evidence.
The engines: :class:`server.rounds.FederatedRun` (Flower's grid, simulated or deployed)
and :class:`server.cohort_engine.CohortRun` (in-process devices, no framework).
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recsys_core.audit.canaries import CANARIES_FILE
from recsys_core.bundle import ModelBundle, write_bundle
from recsys_core.config import dataclass_to_dict
from recsys_core.errors import FedrecError
from recsys_core.federated.aggregation import (
    Arrays,
    RoundResult,
    RoundSum,
    ServerOptimizer,
    apply_round,
    server_optimizer,
)
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.manifest import FederationManifest
from recsys_core.federated.records import AccountantHistory, DeviceFailure, RoundRecord, RoundStatus
from recsys_core.federated.sampling import EVALUATION, TRAINING, sample_partitions
from recsys_core.federated.state import state_to_arrays
from recsys_core.federated.wire import EvaluateReply
from recsys_core.metrics import MetricSums
from recsys_core.privacy.ledger import write_ledger
from recsys_core.privacy.secrets import (
    CENTRAL_NOISE_SECRET,
    NOT_PRIVATE_WARNING,
    SERVER_PARTY,
    secret_generator,
)
from recsys_core.run_records import write_json
from server.privacy import privacy_summary, run_ledger
from server.run_directory import Checkpoint, RunDirectory
from server.secure_aggregation import NO_REPLY

RoundCallback = Callable[[RoundRecord], None]


class RunStoppedError(FedrecError):
    """A round left the run unable to go on; its record and checkpoint are written, and the message says why."""

logger = logging.getLogger("fedrec.server")


@dataclass
class TrainingExchange:
    """What one round's training exchange gave the server, whichever protocol carried it."""

    #: None when the exchange gave no sum (secure aggregation failed); ``failure`` says why.
    round_sum: RoundSum | None
    failure: str = ""
    #: Secure aggregation: the round's gate, checked on the contributions before anything was unmasked.
    gate: tuple[RoundStatus, str] | None = None
    declined: list[int | None] = field(default_factory=list)
    failures: list[DeviceFailure] = field(default_factory=list)
    #: Partitions whose update left the device (used or rejected): the privacy ledger counts them.
    joined: list[int] = field(default_factory=list)
    local_privacy: list[AccountantHistory] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0


def failure_kind(reason: str) -> str:
    """A failure's reason with its numbers read N: one kind for the same error on different devices."""
    return re.sub(r"-?\d[\d.e+-]*", "N", reason)


def failures_by_reason(rounds: list[RoundRecord]) -> dict[str, int]:
    """How many device failures of each kind the run had, most common first."""
    counts = Counter(failure_kind(failure.reason) for record in rounds for failure in record.failures)
    return dict(counts.most_common())


def require_test_metrics(config: FederatedConfig, directory: RunDirectory, summary: dict[str, Any]) -> None:
    """Fails a finished run whose results would mislead: a final test without a usable sum (an empty or
    NaN table), or no round that aggregated an update (a table for the untrained initial model)."""
    if config.server.final_evaluation and not summary.get("test"):
        raise FedrecError(f"{directory.path}: the run ended without test metrics (the final evaluation got no "
                          f"usable sum; failures: {summary.get('failures_by_reason')}, "
                          f"{summary.get('test_failures', 0)} devices failed the test); see rounds.jsonl and "
                          "the log above")
    records = directory.read_rounds()
    if records and not any(record.status == "aggregated" for record in records):
        reasons = sorted({record.status_reason for record in records})
        raise FedrecError(f"{directory.path}: no round aggregated an update, so the model is the untrained initial "
                          f"one and its test metrics mean nothing (why: {'; '.join(reasons)[:300]}; failures: "
                          f"{summary.get('failures_by_reason')}); see rounds.jsonl")


#: Rounds in a row in which every sampled device fails with the same error before the run stops.
SAME_FAILURE_ROUNDS = 3


def common_failure(config: FederatedConfig, record: RoundRecord) -> str | None:
    """The one kind of error every sampled device of the round failed with, if so; None otherwise.

    Devices that did not answer do not count (a network outage passes), nor do the faults a
    simulation injects on purpose (``simulation.failing_partitions``, ``failure_probability``).
    """
    if record.participants or not record.failures or len(record.failures) < record.sampled:
        return None
    if config.simulation.failing_partitions or config.simulation.failure_probability > 0:
        return None
    kinds = {failure_kind(failure.reason) for failure in record.failures}
    return kinds.pop() if len(kinds) == 1 and NO_REPLY not in kinds else None


def sum_evaluations(replies: list[EvaluateReply]) -> dict[str, float]:
    """The mean metrics of plain evaluation replies, added in partition order (the float sums do not
    depend on arrival order)."""
    total = MetricSums()
    for parsed in sorted(replies, key=lambda r: r.partition_id):
        assert parsed.sums is not None
        total.add(parsed.sums)
    return total.means()


@dataclass
class RoundLoop(ABC):
    """One federated run; its inputs are the config, the federation manifest and the devices' replies.

    The server never opens an interaction file (``tests/server/test_deployment.py`` runs it
    with the interaction file unreadable).
    """

    config: FederatedConfig
    run_directory: RunDirectory
    manifest: FederationManifest
    on_round: RoundCallback | None = None
    #: Signs the final model bundle (a deployment's ``bundle-signing.key``), so devices that pin its key load it.
    bundle_signing_key: Ed25519PrivateKey | None = None
    #: The partitions that answered :meth:`connect`, sorted.
    partitions: list[int] = field(default_factory=list, init=False)
    #: The rounds in a row, up to now, in which every device failed with the same kind of error, and that kind.
    repeated_failures: list[int] = field(default_factory=list, init=False)
    repeated_kind: str | None = field(default=None, init=False)

    @abstractmethod
    def connect(self) -> list[int]:
        """Finds the devices of the federation; returns the partitions that answered."""

    @abstractmethod
    def training_exchange(self, current: Arrays, partitions: list[int], server_round: int) -> TrainingExchange:
        """Sends ``current`` to ``partitions`` and returns what their updates add up to."""

    @abstractmethod
    def evaluate(self, shared: Arrays, partitions: list[int], part: str,
                 server_round: int) -> tuple[dict[str, float], int]:
        """Federated evaluation: the mean metrics over ``partitions`` and how many failed to report."""

    def save_device_states(self, completed_round: int) -> None:
        """Makes the devices' state after ``completed_round`` durable before the server's checkpoint names the
        round; nothing here, where devices keep their own state (Flower nodes)."""
        return None

    def online_partitions(self) -> list[int]:
        """The partitions whose devices can be reached now: every one here (simulated devices never go away)."""
        return self.partitions

    def sample(self, server_round: int, count: int, purpose: int) -> list[int]:
        """Sorted partition ids for this round, among those online; the same for any run with the same seed
        and the same devices online."""
        return sample_partitions(self.config.seed, server_round, purpose, self.online_partitions(), count)

    def run_rounds(self, resume: bool = False) -> dict[str, Any]:
        """Every round from the first (or the one after the checkpoint) to ``server.rounds``, then the summary."""
        config = self.config
        if self.manifest.canaries is not None:
            write_json(self.run_directory.path / CANARIES_FILE, self.manifest.canaries)
        self.partitions = sorted(self.connect())
        initial = build_device_model(config, self.manifest.catalog(), 1, 0)
        shared = state_to_arrays(initial.shared_state())
        optimizer = server_optimizer(config)
        first_round = 1
        if resume and (checkpoint := self.run_directory.read_checkpoint()) is not None:
            shared = checkpoint.shared_parameters
            optimizer.restore(checkpoint.strategy_state)
            first_round = checkpoint.completed_round + 1
            self.run_directory.rewind_to(checkpoint)
            logger.info("Resuming after round %d", checkpoint.completed_round)
        for server_round in range(first_round, config.server.rounds + 1):
            shared = self.train_round(optimizer, shared, server_round)
        return self.finish(shared, initial)

    def train_round(self, optimizer: ServerOptimizer, current: Arrays, server_round: int) -> Arrays:
        config = self.config
        started = time.perf_counter()
        partitions = self.sample(server_round, config.server.devices_per_round, TRAINING)
        exchange = self.training_exchange(current, partitions, server_round)
        if exchange.gate is not None:
            result = RoundResult(current, *exchange.gate)
        elif exchange.round_sum is None:
            result = RoundResult(current, "failed", f"secure aggregation: {exchange.failure}")
        else:
            noise = secret_generator(config.privacy.noise_source, config.seed, server_round, SERVER_PARTY,
                                     CENTRAL_NOISE_SECRET)
            result = apply_round(config, current, exchange.round_sum, optimizer, server_round, noise)
        if result.status != "aggregated":
            logger.warning("round %d: %s: %s; model unchanged", server_round, result.status, result.status_reason)
        if result.clipped_coordinates:
            logger.warning("round %d: devices clipped %d update coordinates to secure_aggregation."
                           "update_clip_range; raise it if this persists", server_round, result.clipped_coordinates)
        for failure in exchange.failures:
            logger.warning("round %d: partition %s failed: %s", server_round, failure.partition, failure.reason)
        validation, evaluation_failures = None, None
        if config.server.evaluate_every and server_round % config.server.evaluate_every == 0:
            evaluated = self.sample(server_round, config.server.devices_per_evaluation, EVALUATION)
            validation, evaluation_failures = self.evaluate(result.arrays, evaluated, "valid", server_round)
        record = RoundRecord(
            round=server_round, sampled=len(partitions), secure_aggregation=config.secure_aggregation.enabled,
            status=result.status, status_reason=result.status_reason,
            participants=exchange.round_sum.contributors if result.status == "aggregated" and exchange.round_sum
            else 0,
            declined=tuple(exchange.declined), failures=tuple(exchange.failures), joined=tuple(exchange.joined),
            local_privacy=tuple(exchange.local_privacy), bytes_down=exchange.bytes_down, bytes_up=exchange.bytes_up,
            train_loss=result.train_loss, clipped_coordinates=result.clipped_coordinates,
            user_level=result.user_level, validation=validation, evaluation_failures=evaluation_failures,
            seconds=time.perf_counter() - started)
        self.save_device_states(server_round)
        # The checkpoint, record included, is the round's commit; the line in rounds.jsonl follows it
        # and is replayed from it if the run dies in between (RunDirectory.rewind_to).
        self.run_directory.write_checkpoint(Checkpoint(server_round, result.arrays, optimizer.state(),
                                                       record.to_dict()))
        self.run_directory.append_round(record)
        if self.on_round is not None:
            self.on_round(record)
        if result.fatal:
            raise RunStoppedError(result.fatal)
        self.stop_on_repeated_failure(record)
        return result.arrays

    def stop_on_repeated_failure(self, record: RoundRecord) -> None:
        """Stops a run whose every device has failed the same way for :data:`SAME_FAILURE_ROUNDS` rounds.

        That is the device code or the config failing, not devices: going on would spend the
        remaining rounds on an unchanged model.
        """
        kind = common_failure(self.config, record)
        if kind is None or kind != self.repeated_kind:
            self.repeated_failures = []
        self.repeated_kind = kind
        if kind is not None:
            self.repeated_failures.append(record.round)
        if len(self.repeated_failures) >= SAME_FAILURE_ROUNDS:
            detail = record.failures[0].detail or record.failures[0].reason
            logger.error("every device failed in rounds %d-%d with:\n%s", self.repeated_failures[0], record.round,
                         detail)
            raise RunStoppedError(
                f"every sampled device failed in rounds {self.repeated_failures[0]}-{record.round} with the same "
                f"error: {record.failures[0].reason}. This is the device code or the config failing, not devices; "
                "the traceback is in the log above and in rounds.jsonl (failures[].detail). Fix the cause, then "
                "continue with fedrec simulate --resume RUN_DIR")

    def finish(self, shared: Arrays, initial: Any) -> dict[str, Any]:
        config = self.config
        summary: dict[str, Any] = {"rounds": config.server.rounds}
        if config.server.final_evaluation:
            summary["test"], summary["test_failures"] = self.evaluate(shared, self.online_partitions(), "test",
                                                                      config.server.rounds)
        rounds = self.run_directory.read_rounds()
        summary["seconds_total"] = sum(r.seconds for r in rounds)
        summary["failures_total"] = sum(len(r.failures) for r in rounds)
        summary["failures_by_reason"] = failures_by_reason(rounds)
        summary["bytes_up_total"] = sum(r.bytes_up for r in rounds)
        summary["bytes_down_total"] = sum(r.bytes_down for r in rounds)
        if config.secure_aggregation.enabled:
            summary["secure_aggregation"] = {
                "rounds_failed": sum(r.status == "failed" for r in rounds),
                "clipped_coordinates_total": sum(r.clipped_coordinates or 0 for r in rounds),
                # Devices that pin the authority refuse keys it does not vouch for; without one, every
                # device trusts the server to relay its neighbours' keys unchanged.
                "device_keys": ("certified by device authority " + self.manifest.device_authority
                                if self.manifest.device_authority else
                                "NOT authenticated: the server is trusted to relay devices' keys unchanged")}
        write_bundle(self.run_directory.path / "final-model", ModelBundle(
            config.model.name, dataclass_to_dict(initial.config), initial.catalog.n_items, shared,
            {"rounds": config.server.rounds, "seed": config.seed, "dataset": config.data.dataset},
            self.manifest.bundle_catalog()), signing_key=self.bundle_signing_key)
        ledger = run_ledger(config, self.manifest.num_partitions, rounds)
        ledger_path = None
        if ledger is not None:
            ledger_path = write_ledger(ledger, self.run_directory.ledger_file)
            summary["privacy"] = privacy_summary(ledger)
            if config.privacy.noise_source != "os_entropy":
                summary["privacy"]["not_private"] = NOT_PRIVATE_WARNING
        if shortfall := config.privacy_shortfall():
            summary["not_private"] = f"NOT PRIVATE: {shortfall}"
        summary["record_chain_head"] = self.run_directory.seal(ledger_path)
        write_json(self.run_directory.path / "summary.json", summary)
        self.run_directory.write_plots(rounds)
        return summary
