"""The server's round loop: sample, train, aggregate shared parameters, evaluate, record, checkpoint.

Sampling is over *partitions* with a generator seeded by ``(seed, round)``, and
replies are aggregated in partition order, so a run resumed from its last
checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam

from recsys_core.audit.canaries import CANARIES_FILE
from recsys_core.bundle import ModelBundle, bundle_catalog, write_bundle
from recsys_core.config import dataclass_to_dict
from recsys_core.evaluation import MetricSums
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.device import build_device_model, load_federated_data, state_to_arrays
from recsys_core.federated.sampling import EVALUATION, TRAINING, sample_partitions
from recsys_core.federated.secure_payload import evaluation_layout, evaluation_sums, training_layout, training_sum
from recsys_core.federated.wire import (
    CONFIG_KEY,
    CONFIG_RECORD,
    DEVICE_STATE_DIR_KEY,
    EVALUATION_PART_KEY,
    METRICS_RECORD,
    PARAMETERS_RECORD,
    PRIVACY_ACCOUNTANT_KEY,
    PUBLIC_KEY_KEY,
    ROUND_KEY,
    metric_sums_from_replies,
    update_problem,
)
from recsys_core.privacy.ledger import write_ledger
from recsys_core.run_records import write_json
from recsys_core.secure_aggregation.layout import VectorLayout
from server.privacy import LEDGER_FILE, privacy_summary, run_ledger, user_level_step
from server.run_directory import Checkpoint, RunDirectory
from server.secure_aggregation import ExchangeResult, SecureAggregator, record_arrays, short_reason
from server.strategies import (
    apply_mean_update,
    build_strategy,
    configure_train,
    restore_strategy_state,
    set_learning_rate,
    strategy_state,
)

RoundCallback = Callable[[dict[str, Any]], None]

logger = logging.getLogger("fedrec.server")


def _reply_arrays(reply: Message) -> dict[str, np.ndarray]:
    return record_arrays(reply.content[PARAMETERS_RECORD])


@dataclass
class SortedReplies:
    """A round's replies: usable updates, devices that declined, and failures with their reasons."""

    good: list[Message]
    #: Replies whose update left the device (usable or rejected), for the privacy ledger.
    sent: list[Message]
    answered: list[Message]
    declined: list[int | None]
    failures: list[dict[str, Any]]
    node_to_partition: dict[int, int]

    def privacy_record(self) -> dict[str, Any]:
        """Whose update left the device, and each device's accountant history, for the privacy ledger."""
        partition_of = self.node_to_partition
        return {
            "joined": sorted(partition_of[r.metadata.src_node_id] for r in self.sent),
            "local_privacy": {
                str(partition_of[r.metadata.src_node_id]): str(r.content[CONFIG_RECORD][PRIVACY_ACCOUNTANT_KEY])
                for r in self.answered
                if CONFIG_RECORD in r.content and PRIVACY_ACCOUNTANT_KEY in r.content[CONFIG_RECORD]},
        }


def reply_problem(reply: Message, current: dict[str, np.ndarray]) -> str | None:
    """Why a device's training reply cannot be used, or None: malformed arrays or metrics."""
    if PARAMETERS_RECORD not in reply.content or METRICS_RECORD not in reply.content:
        return f"reply lacks the {PARAMETERS_RECORD!r} or {METRICS_RECORD!r} record"
    metrics = reply.content[METRICS_RECORD]
    for key in ("num-examples", "train-loss"):
        if not isinstance(metrics.get(key), (int, float)):
            return f"metric {key!r} is missing or not a number"
    if not float(metrics["num-examples"]) >= 0:
        return f"metric 'num-examples' is negative ({metrics['num-examples']})"
    return update_problem(_reply_arrays(reply), current)


def sort_replies(replies: list[Message], partitions: list[int], node_to_partition: dict[int, int],
                 current: dict[str, np.ndarray]) -> SortedReplies:
    """Splits replies into usable updates, declines, rejected updates, client errors and missing replies."""
    answered = [reply for reply in replies if not reply.has_error()]
    said_no = [bool(int(r.content[METRICS_RECORD].get("declined", 0))) if METRICS_RECORD in r.content else False
               for r in answered]
    declined = [node_to_partition.get(r.metadata.src_node_id) for r, no in zip(answered, said_no) if no]
    sent = [r for r, no in zip(answered, said_no) if not no]
    problems = [reply_problem(r, current) for r in sent]
    failures = [{"partition": node_to_partition.get(r.metadata.src_node_id), "reason": short_reason(r.error.reason),
                 "detail": r.error.reason} for r in replies if r.has_error()]
    failures += [{"partition": node_to_partition.get(r.metadata.src_node_id), "reason": f"update rejected: {problem}"}
                 for r, problem in zip(sent, problems) if problem]
    failures += [{"partition": p, "reason": "no reply before the round timeout"}
                 for p in set(partitions) - {node_to_partition.get(r.metadata.src_node_id) for r in replies}]
    good = [r for r, problem in zip(sent, problems) if problem is None]
    return SortedReplies(good, sent, answered, declined, failures, node_to_partition)


@dataclass
class FederatedRun:
    """One federated run driven over a Flower grid."""

    config: FederatedConfig
    run_directory: RunDirectory
    on_round: RoundCallback | None = None
    partition_to_node: dict[int, int] = field(default_factory=dict)
    #: Set when ``secure_aggregation.enabled``: runs every training and evaluation exchange.
    secure: SecureAggregator | None = None
    #: Secure aggregation: the most training rows and users of any partition (example weights, metric ranges).
    most_training_rows: int = 1
    most_users: int = 1

    def message_config(self, server_round: int, **extra: Any) -> ConfigRecord:
        return ConfigRecord({CONFIG_KEY: self.config.to_json(), ROUND_KEY: server_round,
                             DEVICE_STATE_DIR_KEY: str(self.run_directory.devices), **extra})

    def discover(self, grid: Grid, expected: int) -> None:
        """Asks every node which partition it holds (once per run; replies carry no data).

        Waits up to ``server.connect_timeout`` seconds for one node per partition, then goes on
        with the nodes that are there (a deployment where not every device is online).
        """
        deadline = time.monotonic() + self.config.server.connect_timeout
        while len(node_ids := sorted(grid.get_node_ids())) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        if len(node_ids) < self.config.server.min_clients:
            raise RuntimeError(f"only {len(node_ids)} nodes connected, fewer than server.min_clients")
        if len(node_ids) < expected:
            logger.warning("%d of %d clients connected; continuing with those", len(node_ids), expected)
        messages = [Message(RecordDict({CONFIG_RECORD: ConfigRecord({"request": "partition"})}),
                            dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
        for reply in grid.send_and_receive(messages, timeout=self.config.server.round_timeout):
            if reply.has_error():
                logger.warning("node %s did not describe itself: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            partition = int(reply.content[METRICS_RECORD]["partition-id"])
            self.partition_to_node[partition] = reply.metadata.src_node_id
            if self.secure is not None:
                self.secure.register(reply.metadata.src_node_id, reply.content[CONFIG_RECORD].get(PUBLIC_KEY_KEY))

    def sample(self, server_round: int, count: int, purpose: int) -> list[int]:
        """Sorted partition ids for this round; the same for any run with the same seed."""
        return sample_partitions(self.config.seed, server_round, purpose, list(self.partition_to_node), count)

    def evaluate(self, grid: Grid, arrays: ArrayRecord, partitions: list[int], part: str,
                 server_round: int) -> tuple[dict[str, float], int]:
        """Federated evaluation: devices rank their own held-out items and send metric sums."""
        record = RecordDict({PARAMETERS_RECORD: arrays,
                             CONFIG_RECORD: self.message_config(server_round, **{EVALUATION_PART_KEY: part})})
        messages = [Message(record, dst_node_id=self.partition_to_node[p], message_type=MessageType.EVALUATE)
                    for p in partitions]
        if self.secure is not None:
            layout = evaluation_layout(self.config.evaluation, self.most_users)
            result = self.secure.exchange(grid, messages, layout, f"evaluate-{part}", server_round)
            if result.total is None:
                logger.error("round %d: secure evaluation failed: %s", server_round, result.failure)
                return {}, len(partitions)
            return evaluation_sums(layout, result.total).means(), len(partitions) - len(result.contributors)
        replies = list(grid.send_and_receive(messages, timeout=self.config.server.round_timeout))
        good = [dict(reply.content[METRICS_RECORD]) for reply in replies if not reply.has_error()]
        # Add in partition order so the float sums do not depend on reply arrival order.
        good.sort(key=lambda metrics: int(metrics["partition-id"]))
        sums: MetricSums = metric_sums_from_replies(good)
        return sums.means(), len(replies) - len(good)

    def run(self, grid: Grid, resume: bool = False) -> dict[str, Any]:
        config = self.config
        data = load_federated_data(config.data, config.partition)
        if config.secure_aggregation.enabled:
            self.secure = SecureAggregator(config, self.run_directory.path.name)
            self.most_training_rows, self.most_users = max(data.most_training_rows(), 1), max(data.most_users(), 1)
        if data.canaries is not None:
            write_json(self.run_directory.path / CANARIES_FILE, data.canaries.to_dict(data.split.train))
        self.discover(grid, data.num_clients)
        initial = build_device_model(config, data.catalog, 1, 0)
        shared = state_to_arrays(initial.shared_state())
        strategy = build_strategy(config.server, config.local.proximal_mu)
        first_round = 1
        if resume and (checkpoint := self.run_directory.read_checkpoint()) is not None:
            shared = checkpoint.shared_parameters
            restore_strategy_state(strategy, checkpoint.strategy_state)
            first_round = checkpoint.completed_round + 1
            self.run_directory.truncate_rounds(checkpoint.completed_round)
            logger.info("Resuming after round %d", checkpoint.completed_round)
        arrays = ArrayRecord({name: Array(value) for name, value in shared.items()})
        for server_round in range(first_round, config.server.rounds + 1):
            arrays = self.train_round(grid, strategy, arrays, server_round)
        return self.finish(grid, arrays, initial)

    def train_round(self, grid: Grid, strategy: Any, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        config = self.config
        started = time.perf_counter()
        partitions = self.sample(server_round, config.server.clients_per_round, TRAINING)
        node_to_partition = {self.partition_to_node[p]: p for p in partitions}
        messages = configure_train(strategy, server_round, arrays, self.message_config(server_round), grid,
                                   [self.partition_to_node[p] for p in partitions])
        current = {name: array.numpy() for name, array in arrays.items()}
        if self.secure is not None:
            arrays, record = self.secure_train(grid, strategy, arrays, current, messages, server_round,
                                               node_to_partition)
        else:
            arrays, record = self.plain_train(grid, strategy, arrays, current, messages, server_round, partitions,
                                              node_to_partition)
        record = {"round": server_round, "sampled": len(partitions),
                  "secure_aggregation": self.secure is not None, **record}
        for failure in record["failures"]:
            logger.warning("round %d: partition %s failed: %s", server_round, failure["partition"], failure["reason"])
        if config.server.evaluate_every and server_round % config.server.evaluate_every == 0:
            evaluated = self.sample(server_round, config.server.clients_per_evaluation, EVALUATION)
            record["validation"], record["evaluation_failures"] = self.evaluate(
                grid, arrays, evaluated, "valid", server_round)
        record["seconds"] = time.perf_counter() - started
        shared = {name: array.numpy() for name, array in arrays.items()}
        self.run_directory.write_checkpoint(Checkpoint(server_round, shared, strategy_state(strategy)))
        self.run_directory.append_round(record)
        if self.on_round is not None:
            self.on_round(record)
        return arrays

    def plain_train(self, grid: Grid, strategy: Any, arrays: ArrayRecord, current: dict[str, np.ndarray],
                    messages: list[Message], server_round: int, partitions: list[int],
                    node_to_partition: dict[int, int]) -> tuple[ArrayRecord, dict[str, Any]]:
        """Devices send their parameters; the strategy aggregates them."""
        replies = list(grid.send_and_receive(messages, timeout=self.config.server.round_timeout))
        # Aggregate in partition order: float sums then do not depend on reply arrival order.
        replies.sort(key=lambda reply: node_to_partition.get(reply.metadata.src_node_id, -1))
        sorted_replies = sort_replies(replies, partitions, node_to_partition, current)
        good = sorted_replies.good
        record: dict[str, Any] = {
            "participants": len(good),
            "declined": sorted_replies.declined,
            "failures": sorted_replies.failures,
            "bytes_down": sum(m.content[PARAMETERS_RECORD].count_bytes() for m in messages),
            "bytes_up": sum(r.content[PARAMETERS_RECORD].count_bytes() for r in good),
        }
        # Who sent an update, every run: the ledger counts it, and an audit of any run reads it.
        record.update(sorted_replies.privacy_record())
        return self.aggregate(strategy, arrays, current, good, server_round, record), record

    def secure_train(self, grid: Grid, strategy: Any, arrays: ArrayRecord, current: dict[str, np.ndarray],
                     messages: list[Message], server_round: int,
                     node_to_partition: dict[int, int]) -> tuple[ArrayRecord, dict[str, Any]]:
        """Devices send masked vectors; the server unmasks their sum and takes the strategy's step from it."""
        assert self.secure is not None
        layout = training_layout(self.config, current)
        result = self.secure.exchange(grid, messages, layout, "train", server_round,
                                      weight_scale=float(self.most_training_rows))
        sorted_replies = self._secure_replies(result, node_to_partition)
        record: dict[str, Any] = {
            "participants": len(result.contributors) if result.total is not None else 0,
            "declined": sorted_replies.declined,
            "failures": sorted_replies.failures,
            "bytes_down": result.bytes_down,
            "bytes_up": result.bytes_up,
        }
        # Who sent an update, every run: the ledger counts it, and an audit of any run reads it.
        record.update(sorted_replies.privacy_record())
        return self.secure_aggregate(strategy, arrays, current, result, layout, server_round, record), record

    @staticmethod
    def _secure_replies(result: ExchangeResult, node_to_partition: dict[int, int]) -> SortedReplies:
        contributed = set(result.contributors)
        answered = [reply for reply in result.replies if not reply.has_error()]
        return SortedReplies(
            good=[], sent=[r for r in answered if r.metadata.src_node_id in contributed], answered=answered,
            declined=[node_to_partition.get(node) for node in result.declined],
            failures=[{"partition": node_to_partition.get(f["node"]), "reason": f["reason"]} for f in result.failures],
            node_to_partition=node_to_partition)

    def secure_aggregate(self, strategy: Any, arrays: ArrayRecord, current: dict[str, np.ndarray],
                         result: ExchangeResult, layout: VectorLayout, server_round: int,
                         record: dict[str, Any]) -> ArrayRecord:
        """The new global arrays from the unmasked sum; unchanged (and logged) when the exchange failed."""
        config = self.config
        user_level = config.privacy.user_level
        set_learning_rate(strategy, config.server.learning_rate_at(server_round))
        contributors = len(result.contributors)
        if result.total is None:
            record["status"] = f"failed: secure aggregation: {result.failure}"
        elif contributors < config.server.min_clients:
            record["status"] = f"skipped: {contributors} contributions, fewer than server.min_clients"
        elif user_level.enabled and contributors < user_level.min_surviving_clients:
            record["status"] = (f"discarded: {contributors} updates, fewer than privacy.user_level."
                                f"min_surviving_clients = {user_level.min_surviving_clients}")
        if "status" in record:
            logger.warning("round %d: %s; model unchanged", server_round, record["status"])
            return arrays
        assert result.total is not None
        summed = training_sum(layout, result.total)
        if user_level.enabled:
            # The server sees only the sum: it attests the settings each device was sent, not the noise.
            record["user_level"] = {
                "noise_multiplier": user_level.noise_multiplier, "clip_norm": user_level.clip_norm,
                "noise_placement": user_level.noise_placement, "expected_clients": config.server.clients_per_round,
                "updates": contributors, "min_surviving_clients": user_level.min_surviving_clients}
            # DP-FedAvg divides by the planned number of clients, as in server.privacy.user_level_step.
            mean = {name: (summed.update_sum[name] / config.server.clients_per_round).reshape(np.shape(value))
                    for name, value in current.items()}
        else:
            mean = summed.mean_update(current)
            if not config.privacy.local.enabled:  # under local DP devices report no loss
                record["train_loss"] = summed.weighted_loss_sum / max(summed.weight_sum, 1e-12)
        record["clipped_coordinates"] = summed.clipped_coordinates
        if summed.clipped_coordinates:
            logger.warning("round %d: devices clipped %d update coordinates to secure_aggregation."
                           "update_clip_range; raise it if this persists", server_round, summed.clipped_coordinates)
        updated = apply_mean_update(strategy, current, mean, server_round, config.server.learning_rate_at(server_round))
        record["status"] = "aggregated"
        return ArrayRecord({name: Array(value) for name, value in updated.items()})

    def aggregate(self, strategy: Any, arrays: ArrayRecord, current: dict[str, np.ndarray], good: list[Message],
                  server_round: int, record: dict[str, Any]) -> ArrayRecord:
        """The round's new global arrays (unchanged when too few updates); sets ``status`` and ``train_loss``."""
        config = self.config
        user_level = config.privacy.user_level
        set_learning_rate(strategy, config.server.learning_rate_at(server_round))
        if len(good) < config.server.min_clients:
            record["status"] = f"skipped: {len(good)} replies, fewer than server.min_clients"
            logger.warning("round %d: %s; model unchanged", server_round, record["status"])
            return arrays
        if (user_level.enabled and user_level.noise_placement == "distributed"
                and len(good) < user_level.min_surviving_clients):
            # The shares were sized for min_surviving_clients: fewer carry too little noise to release.
            record["status"] = (f"discarded: {len(good)} updates, fewer than privacy.user_level."
                                f"min_surviving_clients = {user_level.min_surviving_clients}")
            logger.warning("round %d: %s; model unchanged", server_round, record["status"])
            return arrays
        if user_level.enabled:
            record["user_level"] = {}
            updated = user_level_step(config, current, [_reply_arrays(r) for r in good],
                                      strategy if isinstance(strategy, FedAdam) else None, server_round,
                                      evidence=record["user_level"])
            arrays = ArrayRecord({name: Array(value) for name, value in updated.items()})
        else:
            aggregated, _ = strategy.aggregate_train(server_round, good)
            if aggregated is not None:
                # Flower's FedOpt strategies return float64: keep the model's dtypes, or every later
                # message doubles in size (measured: 3.3 to 6.6 MB per Beauty SASRec client).
                arrays = ArrayRecord({name: Array(np.asarray(array.numpy(), dtype=current[name].dtype))
                                      for name, array in aggregated.items()})
        weights = np.array([float(r.content[METRICS_RECORD]["num-examples"]) for r in good])
        losses = np.array([float(r.content[METRICS_RECORD]["train-loss"]) for r in good])
        # Under DP a device reports no loss (NaN): the exact loss is not covered by its guarantee.
        reported = np.isfinite(losses)
        if reported.any():
            record["train_loss"] = float((weights[reported] * losses[reported]).sum()
                                         / max(weights[reported].sum(), 1e-12))
        record["status"] = "aggregated"
        return arrays

    def finish(self, grid: Grid, arrays: ArrayRecord, initial: Any) -> dict[str, Any]:
        config = self.config
        summary: dict[str, Any] = {"rounds": config.server.rounds}
        if config.server.final_evaluation:
            everyone = sorted(self.partition_to_node)
            summary["test"], summary["test_failures"] = self.evaluate(grid, arrays, everyone, "test",
                                                                      config.server.rounds)
        rounds = self.run_directory.read_rounds()
        summary["seconds_total"] = sum(r.get("seconds", 0.0) for r in rounds)
        summary["failures_total"] = sum(len(r.get("failures", [])) for r in rounds)
        summary["bytes_up_total"] = sum(r.get("bytes_up", 0) for r in rounds)
        summary["bytes_down_total"] = sum(r.get("bytes_down", 0) for r in rounds)
        if config.secure_aggregation.enabled:
            summary["secure_aggregation"] = {
                "rounds_failed": sum(str(r.get("status", "")).startswith("failed") for r in rounds),
                "clipped_coordinates_total": sum(r.get("clipped_coordinates", 0) for r in rounds)}
        shared = {name: array.numpy() for name, array in arrays.items()}
        data = load_federated_data(config.data, config.partition)
        write_bundle(self.run_directory.path / "final-model", ModelBundle(
            config.model.name, dataclass_to_dict(initial.config), initial.catalog.n_items, shared,
            {"rounds": config.server.rounds, "seed": config.seed, "dataset": config.data.dataset},
            bundle_catalog(data.split.train)))
        ledger = run_ledger(config, data.num_clients, rounds)
        ledger_path = None
        if ledger is not None:
            ledger_path = write_ledger(ledger, self.run_directory.path / LEDGER_FILE)
            summary["privacy"] = privacy_summary(ledger)
        summary["record_chain_head"] = self.run_directory.seal(ledger_path)
        write_json(self.run_directory.path / "summary.json", summary)
        self.run_directory.write_plots(rounds)
        return summary
