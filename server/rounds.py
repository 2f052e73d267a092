"""The server's round loop: sample, exchange, apply the round, evaluate, record, checkpoint.

Sampling is over *partitions* with a generator seeded by ``(seed, round)``, and
replies are summed in partition order, so a run resumed from its last checkpoint
continues exactly as an uninterrupted run would. The exchange (plain replies or a
secure sum) ends in a :class:`~recsys_core.federated.aggregation.RoundSum`; everything
after that, gates, noise and the server step, is :func:`~recsys_core.federated.aggregation.apply_round`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from recsys_core.audit.canaries import CANARIES_FILE
from recsys_core.bundle import ModelBundle, write_bundle
from recsys_core.config import dataclass_to_dict
from recsys_core.evaluation import MetricSums, metric_names
from recsys_core.federated.aggregation import (
    Arrays,
    RoundResult,
    RoundSum,
    ServerOptimizer,
    apply_round,
    server_optimizer,
    sum_plain_updates,
)
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.manifest import FederationManifest
from recsys_core.federated.records import AccountantHistory, DeviceFailure, RoundRecord
from recsys_core.federated.sampling import EVALUATION, TRAINING, sample_partitions
from recsys_core.federated.secure_payload import evaluation_layout, evaluation_sums, training_layout, training_sum
from recsys_core.federated.state import state_to_arrays
from recsys_core.federated.wire import (
    CONFIG_KEY,
    CONFIG_RECORD,
    EVALUATION_PART_KEY,
    METRICS_RECORD,
    PARAMETERS_RECORD,
    PUBLIC_KEY_KEY,
    ROUND_KEY,
    EvaluateReply,
    MalformedReplyError,
    TrainReply,
    reported_partition,
    update_problem,
)
from recsys_core.privacy.ledger import write_ledger
from recsys_core.run_records import write_json
from server.privacy import privacy_summary, run_ledger
from server.run_directory import Checkpoint, RunDirectory
from server.secure_aggregation import SecureAggregator, record_arrays, short_reason

RoundCallback = Callable[[RoundRecord], None]

logger = logging.getLogger("fedrec.server")


@dataclass
class TrainingExchange:
    """What one round's training exchange gave the server, whichever protocol carried it."""

    #: None when the exchange gave no sum (secure aggregation failed); ``failure`` says why.
    round_sum: RoundSum | None
    failure: str = ""
    declined: list[int | None] = field(default_factory=list)
    failures: list[DeviceFailure] = field(default_factory=list)
    #: Partitions whose update left the device (used or rejected): the privacy ledger counts them.
    joined: list[int] = field(default_factory=list)
    local_privacy: list[AccountantHistory] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0


def _reply_failure(reply: Message, partition: int | None) -> DeviceFailure:
    return DeviceFailure(partition, short_reason(reply.error.reason), str(reply.error.reason))


def read_train_reply(reply: Message, with_counts: bool) -> TrainReply:
    """The typed training reply a device sent; :class:`MalformedReplyError` says what is wrong with it."""
    if METRICS_RECORD not in reply.content:
        raise MalformedReplyError(f"reply lacks the {METRICS_RECORD!r} record")
    config = reply.content.get(CONFIG_RECORD)
    return TrainReply.from_metrics(reply.content[METRICS_RECORD], config, with_counts=with_counts)


def sort_replies(replies: list[Message], partitions: list[int], node_to_partition: dict[int, int],
                 current: Arrays) -> tuple[list[tuple[int, Arrays, TrainReply]], TrainingExchange]:
    """Splits plain replies into usable updates (in partition order) and the round's bookkeeping."""
    exchange = TrainingExchange(round_sum=None)
    usable = []
    for reply in sorted(replies, key=lambda r: node_to_partition.get(r.metadata.src_node_id, -1)):
        partition = node_to_partition.get(reply.metadata.src_node_id)
        if reply.has_error():
            exchange.failures.append(_reply_failure(reply, partition))
            continue
        try:
            parsed = read_train_reply(reply, with_counts=True)
        except MalformedReplyError as error:
            exchange.failures.append(DeviceFailure(partition, f"update rejected: {error}"))
            if partition is not None:
                exchange.joined.append(partition)
            continue
        if parsed.accountant is not None and partition is not None:
            exchange.local_privacy.append(AccountantHistory.of(partition, parsed.accountant))
        if parsed.declined:
            exchange.declined.append(partition)
            continue
        if partition is not None:
            exchange.joined.append(partition)
        if PARAMETERS_RECORD not in reply.content.array_records:
            problem: str | None = f"reply lacks the {PARAMETERS_RECORD!r} record"
        else:
            arrays = record_arrays(reply.content.array_records[PARAMETERS_RECORD])
            problem = update_problem(arrays, current)
        if problem is not None or partition is None:
            exchange.failures.append(DeviceFailure(partition, f"update rejected: {problem or 'unknown sender'}"))
            continue
        usable.append((partition, arrays, parsed))
    answered = {node_to_partition.get(reply.metadata.src_node_id) for reply in replies}
    exchange.failures += [DeviceFailure(p, "no reply before the round timeout")
                          for p in sorted(set(partitions) - answered)]
    return usable, exchange


@dataclass
class FederatedRun:
    """One federated run driven over a Flower grid.

    Its inputs are the config, the federation manifest and the devices' replies: the server
    never opens an interaction file (``tests/server/test_deployment.py`` runs it with the
    interaction file unreadable).
    """

    config: FederatedConfig
    run_directory: RunDirectory
    manifest: FederationManifest
    on_round: RoundCallback | None = None
    partition_to_node: dict[int, int] = field(default_factory=dict)
    #: Set when ``secure_aggregation.enabled``: runs every training and evaluation exchange.
    secure: SecureAggregator | None = None
    #: Secure aggregation: the most training rows and users of any partition (example weights, metric ranges).
    most_training_rows: int = 1
    most_users: int = 1

    def message_config(self, server_round: int, **extra: Any) -> ConfigRecord:
        return ConfigRecord({CONFIG_KEY: self.config.to_json(), ROUND_KEY: server_round, **extra})

    def messages(self, content: RecordDict, partitions: list[int], message_type: str) -> list[Message]:
        return [Message(content, dst_node_id=self.partition_to_node[p], message_type=message_type)
                for p in partitions]

    def discover(self, grid: Grid, expected: int) -> None:
        """Asks every node which partition it holds (once per run; replies carry no data).

        Waits up to ``server.connect_timeout`` seconds for one node per partition, then goes on
        with the nodes that are there (a deployment where not every device is online).
        """
        deadline = time.monotonic() + self.config.server.connect_timeout
        while len(node_ids := sorted(grid.get_node_ids())) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        if len(node_ids) < self.config.server.min_devices:
            raise RuntimeError(f"only {len(node_ids)} nodes connected, fewer than server.min_devices")
        if len(node_ids) < expected:
            logger.warning("%d of %d clients connected; continuing with those", len(node_ids), expected)
        messages = [Message(RecordDict({CONFIG_RECORD: ConfigRecord({"request": "partition"})}),
                            dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
        for reply in grid.send_and_receive(messages, timeout=self.config.server.round_timeout):
            if reply.has_error():
                logger.warning("node %s did not describe itself: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            try:
                partition = reported_partition(reply.content[METRICS_RECORD])
            except (KeyError, MalformedReplyError) as error:
                logger.warning("node %s described itself wrongly: %s", reply.metadata.src_node_id, error)
                continue
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
        messages = self.messages(record, partitions, MessageType.EVALUATE)
        if self.secure is not None:
            layout = evaluation_layout(self.config.evaluation, self.most_users)
            result = self.secure.exchange(grid, messages, layout, f"evaluate-{part}", server_round)
            if result.total is None:
                logger.error("round %d: secure evaluation failed: %s", server_round, result.failure)
                return {}, len(partitions)
            return evaluation_sums(layout, result.total).means(), len(partitions) - len(result.contributors)
        names = metric_names(self.config.evaluation)
        good: list[EvaluateReply] = []
        for reply in grid.send_and_receive(messages, timeout=self.config.server.round_timeout):
            if reply.has_error():
                continue
            try:
                good.append(EvaluateReply.from_metrics(reply.content[METRICS_RECORD], names))
            except (KeyError, MalformedReplyError) as error:
                logger.warning("round %d: node %s sent an unusable evaluation: %s", server_round,
                               reply.metadata.src_node_id, error)
        total = MetricSums()
        # Add in partition order so the float sums do not depend on reply arrival order.
        for parsed in sorted(good, key=lambda r: r.partition_id):
            assert parsed.sums is not None
            total.add(parsed.sums)
        return total.means(), len(partitions) - len(good)

    def run(self, grid: Grid, resume: bool = False) -> dict[str, Any]:
        config = self.config
        manifest = self.manifest
        if config.secure_aggregation.enabled:
            self.secure = SecureAggregator(config, self.run_directory.path.name)
            self.most_training_rows, self.most_users = manifest.max_training_rows, manifest.max_users
        if manifest.canaries is not None:
            write_json(self.run_directory.path / CANARIES_FILE, manifest.canaries)
        self.discover(grid, manifest.num_partitions)
        initial = build_device_model(config, manifest.catalog(), 1, 0)
        shared = state_to_arrays(initial.shared_state())
        optimizer = server_optimizer(config)
        first_round = 1
        if resume and (checkpoint := self.run_directory.read_checkpoint()) is not None:
            shared = checkpoint.shared_parameters
            optimizer.restore(checkpoint.strategy_state)
            first_round = checkpoint.completed_round + 1
            self.run_directory.truncate_rounds(checkpoint.completed_round)
            logger.info("Resuming after round %d", checkpoint.completed_round)
        for server_round in range(first_round, config.server.rounds + 1):
            shared = self.train_round(grid, optimizer, shared, server_round)
        return self.finish(grid, shared, initial)

    def train_round(self, grid: Grid, optimizer: ServerOptimizer, current: Arrays, server_round: int) -> Arrays:
        config = self.config
        started = time.perf_counter()
        partitions = self.sample(server_round, config.server.devices_per_round, TRAINING)
        arrays = ArrayRecord({name: Array(value) for name, value in current.items()})
        content = RecordDict({PARAMETERS_RECORD: arrays, CONFIG_RECORD: self.message_config(server_round)})
        messages = self.messages(content, partitions, MessageType.TRAIN)
        exchange = (self.secure_exchange(grid, messages, current, server_round) if self.secure is not None
                    else self.plain_exchange(grid, messages, current, partitions))
        if exchange.round_sum is None:
            result = RoundResult(current, "failed", f"secure aggregation: {exchange.failure}")
        else:
            result = apply_round(config, current, exchange.round_sum, optimizer, server_round)
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
            updated = ArrayRecord({name: Array(value) for name, value in result.arrays.items()})
            validation, evaluation_failures = self.evaluate(grid, updated, evaluated, "valid", server_round)
        record = RoundRecord(
            round=server_round, sampled=len(partitions), secure_aggregation=self.secure is not None,
            status=result.status, status_reason=result.status_reason,
            participants=exchange.round_sum.contributors if result.status == "aggregated" and exchange.round_sum
            else 0,
            declined=tuple(exchange.declined), failures=tuple(exchange.failures), joined=tuple(exchange.joined),
            local_privacy=tuple(exchange.local_privacy), bytes_down=exchange.bytes_down, bytes_up=exchange.bytes_up,
            train_loss=result.train_loss, clipped_coordinates=result.clipped_coordinates,
            user_level=result.user_level, validation=validation, evaluation_failures=evaluation_failures,
            seconds=time.perf_counter() - started)
        self.run_directory.write_checkpoint(Checkpoint(server_round, result.arrays, optimizer.state()))
        self.run_directory.append_round(record)
        if self.on_round is not None:
            self.on_round(record)
        return result.arrays

    def plain_exchange(self, grid: Grid, messages: list[Message], current: Arrays,
                       partitions: list[int]) -> TrainingExchange:
        """Devices send their parameters in clear; the server sums them in partition order."""
        node_to_partition = {self.partition_to_node[p]: p for p in partitions}
        replies = list(grid.send_and_receive(messages, timeout=self.config.server.round_timeout))
        usable, exchange = sort_replies(replies, partitions, node_to_partition, current)
        updates = [(arrays, reply.num_examples or 0, reply.train_loss if reply.train_loss is not None
                    else float("nan")) for _, arrays, reply in usable]
        exchange.round_sum = sum_plain_updates(self.config, current, updates)
        exchange.bytes_down = sum(m.content[PARAMETERS_RECORD].count_bytes() for m in messages)
        good_nodes = {self.partition_to_node[partition] for partition, _, _ in usable}
        exchange.bytes_up = sum(r.content[PARAMETERS_RECORD].count_bytes() for r in replies
                                if r.metadata.src_node_id in good_nodes)
        return exchange

    def secure_exchange(self, grid: Grid, messages: list[Message], current: Arrays,
                        server_round: int) -> TrainingExchange:
        """Devices send masked vectors; the server learns only their sum."""
        assert self.secure is not None
        node_to_partition = {node: partition for partition, node in self.partition_to_node.items()}
        layout = training_layout(self.config, current)
        result = self.secure.exchange(grid, messages, layout, "train", server_round,
                                      weight_scale=float(self.most_training_rows))
        exchange = TrainingExchange(
            round_sum=None, failure=result.failure or "",
            declined=[node_to_partition.get(node) for node in result.declined],
            failures=[DeviceFailure(node_to_partition.get(f["node"]), f["reason"]) for f in result.failures],
            bytes_up=result.bytes_up, bytes_down=result.bytes_down)
        contributed = set(result.contributors)
        for reply in result.replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or (partition := node_to_partition.get(node)) is None:
                continue
            try:
                parsed = read_train_reply(reply, with_counts=False)
            except MalformedReplyError:
                continue  # the secure exchange has already set this reply aside and said why
            if parsed.accountant is not None:
                exchange.local_privacy.append(AccountantHistory.of(partition, parsed.accountant))
            if node in contributed:
                exchange.joined.append(partition)
        exchange.joined.sort()
        if result.total is not None:
            reports_loss = not (self.config.privacy.local.enabled or self.config.privacy.user_level.enabled)
            exchange.round_sum = training_sum(layout, result.total).round_sum(current, len(result.contributors),
                                                                              reports_loss)
        return exchange

    def finish(self, grid: Grid, shared: Arrays, initial: Any) -> dict[str, Any]:
        config = self.config
        summary: dict[str, Any] = {"rounds": config.server.rounds}
        if config.server.final_evaluation:
            everyone = sorted(self.partition_to_node)
            arrays = ArrayRecord({name: Array(value) for name, value in shared.items()})
            summary["test"], summary["test_failures"] = self.evaluate(grid, arrays, everyone, "test",
                                                                      config.server.rounds)
        rounds = self.run_directory.read_rounds()
        summary["seconds_total"] = sum(r.seconds for r in rounds)
        summary["failures_total"] = sum(len(r.failures) for r in rounds)
        summary["bytes_up_total"] = sum(r.bytes_up for r in rounds)
        summary["bytes_down_total"] = sum(r.bytes_down for r in rounds)
        if config.secure_aggregation.enabled:
            summary["secure_aggregation"] = {
                "rounds_failed": sum(r.status == "failed" for r in rounds),
                "clipped_coordinates_total": sum(r.clipped_coordinates or 0 for r in rounds)}
        write_bundle(self.run_directory.path / "final-model", ModelBundle(
            config.model.name, dataclass_to_dict(initial.config), initial.catalog.n_items, shared,
            {"rounds": config.server.rounds, "seed": config.seed, "dataset": config.data.dataset},
            self.manifest.bundle_catalog()))
        ledger = run_ledger(config, self.manifest.num_partitions, rounds)
        ledger_path = None
        if ledger is not None:
            ledger_path = write_ledger(ledger, self.run_directory.ledger_file)
            summary["privacy"] = privacy_summary(ledger)
        summary["record_chain_head"] = self.run_directory.seal(ledger_path)
        write_json(self.run_directory.path / "summary.json", summary)
        self.run_directory.write_plots(rounds)
        return summary
