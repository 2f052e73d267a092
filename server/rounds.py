"""The Flower engine of the round loop: messages over a Flower grid (simulated or deployed).

:class:`FederatedRun` is the :class:`~server.round_loop.RoundLoop` whose exchanges are
Flower messages: it discovers the nodes and their partitions, sends the global model,
and reads the devices' replies (in clear, or as a secure sum) at the server's edge.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from recsys_core.federated.aggregation import Arrays, round_gate, sum_plain_updates
from recsys_core.federated.cohort import DeviceProgress
from recsys_core.federated.records import AccountantHistory, DeviceFailure
from recsys_core.federated.robust import screen_updates
from recsys_core.federated.secure_payload import evaluation_layout, evaluation_sums, training_layout, training_sum
from recsys_core.federated.wire import (
    CONFIG_KEY,
    CONFIG_RECORD,
    EVALUATION_PART_KEY,
    METRICS_RECORD,
    PARAMETERS_RECORD,
    PUBLIC_KEY_KEY,
    ROUND_KEY,
    SECURE_ARRAYS_RECORD,
    EvaluateReply,
    MalformedReplyError,
    TrainReply,
    reported_partition,
    update_problem,
)
from recsys_core.metrics import metric_names
from server.round_loop import RoundCallback, RoundLoop, TrainingExchange, sum_evaluations
from server.secure_aggregation import (
    NO_REPLY,
    SecureAggregator,
    record_arrays,
    reply_node,
    sent_nodes,
    short_reason,
)

#: Seconds a held-out device has to answer the probe that brings it back into the rounds.
PROBE_TIMEOUT = 10.0

__all__ = ["FederatedRun", "RoundCallback", "TrainingExchange", "read_train_reply", "sort_replies"]

logger = logging.getLogger("fedrec.server")


def _reply_failure(reply: Message, partition: int | None) -> DeviceFailure:
    return DeviceFailure(partition, short_reason(reply.error.reason), str(reply.error.reason))


def read_train_reply(reply: Message, with_counts: bool, max_examples: int | None = None,
                     partition: int | None = None) -> TrainReply:
    """The typed training reply a device sent; :class:`MalformedReplyError` says what is wrong with it.

    ``partition``: the one the sending node holds; a reply that names another is refused.
    """
    if METRICS_RECORD not in reply.content:
        raise MalformedReplyError(f"reply lacks the {METRICS_RECORD!r} record")
    allowed = {METRICS_RECORD, CONFIG_RECORD, PARAMETERS_RECORD if with_counts else SECURE_ARRAYS_RECORD}
    if unexpected := sorted(set(reply.content) - allowed):
        raise MalformedReplyError(f"unexpected record(s) {unexpected[:3]}")
    config = reply.content.get(CONFIG_RECORD)
    parsed = TrainReply.from_metrics(reply.content[METRICS_RECORD], config, with_counts=with_counts,
                                     max_examples=max_examples)
    if partition is not None and parsed.partition_id != partition:
        raise MalformedReplyError(f"reply names partition {parsed.partition_id}, but its node holds partition "
                                  f"{partition}")
    return parsed


def sort_replies(
    replies: list[Message], partitions: list[int], node_to_partition: dict[int, int], current: Arrays,
    max_examples: int | None = None, sent_to: dict[str, int] | None = None,
) -> tuple[list[tuple[int, Arrays, TrainReply]], TrainingExchange]:
    """Splits plain replies into usable updates (in partition order) and the round's bookkeeping.

    ``max_examples``: the federation's public bound on one device's example count. ``sent_to``
    (:func:`sent_nodes`) places error replies the SuperLink wrote on their node, so a dead node's
    round counts one failure.
    """
    exchange = TrainingExchange(round_sum=None)
    usable = []
    sent_to = sent_to or {}

    def partition_of(reply: Message) -> int | None:
        return node_to_partition.get(reply_node(reply, sent_to))

    for reply in sorted(replies, key=lambda r: (p if (p := partition_of(r)) is not None else -1)):
        partition = partition_of(reply)
        if reply.has_error():
            exchange.failures.append(_reply_failure(reply, partition))
            continue
        try:
            parsed = read_train_reply(reply, with_counts=True, max_examples=max_examples, partition=partition)
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
    answered = {partition_of(reply) for reply in replies}
    exchange.failures += [DeviceFailure(p, NO_REPLY) for p in sorted(set(partitions) - answered)]
    return usable, exchange


@dataclass
class FederatedRun(RoundLoop):
    """The round loop over a Flower grid: ``fedrec simulate`` (Ray), ``flwr run`` and deployments."""

    grid: Grid | None = None
    partition_to_node: dict[int, int] = field(default_factory=dict)
    #: Set when ``secure_aggregation.enabled``: runs every training and evaluation exchange.
    secure: SecureAggregator | None = None
    #: Secure aggregation: the most training rows and users of any partition (example weights, metric ranges).
    most_training_rows: int = 1
    most_users: int = 1
    #: Called as each exchange starts and ends, with (exchange, devices answered so far, devices asked): a
    #: Flower exchange is one wait for every reply, so it reports 0 then all (progress for long phases).
    on_device: DeviceProgress | None = None
    #: Partitions whose node was offline at the last look (:meth:`online_partitions`).
    offline: set[int] = field(default_factory=set)
    #: Partitions that did not answer a training exchange (timeout, or the SuperLink's "Node Unavailable"):
    #: held out of sampling until they answer a probe, as the SuperLink may list a dead node as online for a while.
    unreachable: set[int] = field(default_factory=set)

    def online_partitions(self) -> list[int]:
        """The partitions whose node the SuperLink lists as online (it stops listing a node that misses its
        heartbeats); a node that went away is left out of sampling, said once, and back when it returns."""
        online = set(self._grid().get_node_ids())
        partitions = [p for p in self.partitions if self.partition_to_node[p] in online and p not in self.unreachable]
        offline = set(self.partitions) - set(partitions)
        for partition in sorted(offline - self.offline):
            logger.warning("partition %d: its node is offline; left out of the rounds until it returns", partition)
        for partition in sorted(self.offline - offline):
            logger.warning("partition %d: its node is back online", partition)
        self.offline = offline
        return partitions

    def run(self, grid: Grid, resume: bool = False) -> dict[str, Any]:
        """The whole run over ``grid``; returns the summary."""
        self.grid = grid
        return self.run_rounds(resume)

    def _grid(self) -> Grid:
        if self.grid is None:
            raise RuntimeError("FederatedRun has no grid: start it with run(grid)")
        return self.grid

    def message_config(self, server_round: int, **extra: Any) -> ConfigRecord:
        return ConfigRecord({CONFIG_KEY: self.config.to_json(), ROUND_KEY: server_round, **extra})

    def messages(self, content: RecordDict, partitions: list[int], message_type: str) -> list[Message]:
        return [Message(content, dst_node_id=self.partition_to_node[p], message_type=message_type)
                for p in partitions]

    def connect(self) -> list[int]:
        if self.config.secure_aggregation.enabled:
            self.secure = SecureAggregator(self.config, self.run_directory.path.name, self.manifest.authority_key())
            self.most_training_rows, self.most_users = self.manifest.max_training_rows, self.manifest.max_users
        self.discover(self._grid(), self.manifest.num_partitions)
        return list(self.partition_to_node)

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
        self.describe(grid, node_ids, self.config.server.round_timeout)

    def describe(self, grid: Grid, node_ids: list[int], timeout: float) -> set[int]:
        """Asks ``node_ids`` which partition each holds (and its public key); returns the partitions that answered."""
        messages = [Message(RecordDict({CONFIG_RECORD: ConfigRecord({"request": "partition"})}),
                            dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
        answered = set()
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                logger.warning("node %s did not describe itself: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            try:
                partition = reported_partition(reply.content[METRICS_RECORD])
            except (KeyError, MalformedReplyError) as error:
                logger.warning("node %s described itself wrongly: %s", reply.metadata.src_node_id, error)
                continue
            self.partition_to_node[partition] = reply.metadata.src_node_id
            answered.add(partition)
            if self.secure is not None:
                registration = reply.content.config_records.get(CONFIG_RECORD, ConfigRecord())
                self.secure.register(reply.metadata.src_node_id, registration.get(PUBLIC_KEY_KEY), registration)
        return answered

    def report(self, exchange: str, done: int, total: int) -> None:
        if self.on_device is not None:
            self.on_device(exchange, done, total)

    def evaluate(self, shared: Arrays, partitions: list[int], part: str,
                 server_round: int) -> tuple[dict[str, float], int]:
        """Federated evaluation: devices rank their own held-out items and send metric sums."""
        self.report(part, 0, len(partitions))
        try:
            return self.evaluate_on_grid(shared, partitions, part, server_round)
        finally:
            self.report(part, len(partitions), len(partitions))

    def evaluate_on_grid(self, shared: Arrays, partitions: list[int], part: str,
                         server_round: int) -> tuple[dict[str, float], int]:
        grid = self._grid()
        record = RecordDict({PARAMETERS_RECORD: _array_record(shared),
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
        node_to_partition = {self.partition_to_node[p]: p for p in partitions}
        good: list[EvaluateReply] = []
        for reply in grid.send_and_receive(messages, timeout=self.config.server.round_timeout):
            if reply.has_error():
                continue
            try:
                parsed = EvaluateReply.from_metrics(reply.content[METRICS_RECORD], names, self.manifest.max_users)
                if parsed.partition_id != node_to_partition.get(reply.metadata.src_node_id):
                    raise MalformedReplyError(f"reply names partition {parsed.partition_id}, not its node's")
                good.append(parsed)
            except (KeyError, MalformedReplyError) as error:
                logger.warning("round %d: node %s sent an unusable evaluation: %s", server_round,
                               reply.metadata.src_node_id, error)
        return sum_evaluations(good), len(partitions) - len(good)

    def training_exchange(self, current: Arrays, partitions: list[int], server_round: int) -> TrainingExchange:
        content = RecordDict({PARAMETERS_RECORD: _array_record(current),
                              CONFIG_RECORD: self.message_config(server_round)})
        messages = self.messages(content, partitions, MessageType.TRAIN)
        self.report("train", 0, len(partitions))
        if self.secure is not None:
            exchange = self.secure_exchange(messages, current, server_round)
        else:
            exchange = self.plain_exchange(messages, current, partitions)
        self.report("train", len(partitions), len(partitions))
        unanswered = {failure.partition for failure in exchange.failures if failure.partition is not None
                      and (failure.reason == NO_REPLY or "Node Unavailable" in failure.reason)}
        for partition in sorted(unanswered - self.unreachable):
            logger.warning("round %d: partition %d did not answer; held out until it answers a probe", server_round,
                           partition)
        # Those held out from before are probed (a short describe query): one that answers is back.
        waiting = sorted(self.unreachable - set(partitions))
        back = self.describe(self._grid(), [self.partition_to_node[p] for p in waiting], PROBE_TIMEOUT) \
            if waiting else set()
        for partition in sorted(back):
            logger.warning("round %d: partition %d answers again; back in the rounds", server_round, partition)
        self.unreachable = (self.unreachable - set(partitions) - back) | unanswered
        return exchange

    def plain_exchange(self, messages: list[Message], current: Arrays, partitions: list[int]) -> TrainingExchange:
        """Devices send their parameters in clear; the server sums them in partition order."""
        node_to_partition = {self.partition_to_node[p]: p for p in partitions}
        replies = list(self._grid().send_and_receive(messages, timeout=self.config.server.round_timeout))
        usable, exchange = sort_replies(replies, partitions, node_to_partition, current,
                                        self.manifest.max_training_rows, sent_nodes(messages))
        screened, outlying = screen_updates(self.config, current, [
            (partition, arrays, reply.num_examples or 0, float("nan") if reply.train_loss is None else reply.train_loss)
            for partition, arrays, reply in usable])
        exchange.failures = sorted(exchange.failures + outlying, key=_failure_order)
        exchange.round_sum = sum_plain_updates(self.config, current, [update[1:] for update in screened])
        exchange.bytes_down = sum(m.content[PARAMETERS_RECORD].count_bytes() for m in messages)
        good_nodes = {self.partition_to_node[partition] for partition, _, _, _ in screened}
        exchange.bytes_up = sum(r.content[PARAMETERS_RECORD].count_bytes() for r in replies
                                if r.metadata.src_node_id in good_nodes)
        return exchange

    def secure_exchange(self, messages: list[Message], current: Arrays, server_round: int) -> TrainingExchange:
        """Devices send masked vectors; the server learns only their sum."""
        assert self.secure is not None
        node_to_partition = {node: partition for partition, node in self.partition_to_node.items()}
        layout = training_layout(self.config, current)
        result = self.secure.exchange(self._grid(), messages, layout, "train", server_round,
                                      weight_scale=float(self.most_training_rows),
                                      gate=lambda contributions: round_gate(self.config, contributions))
        exchange = TrainingExchange(
            round_sum=None, failure=result.failure or "", gate=result.gate,
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


def _failure_order(failure: DeviceFailure) -> int:
    return failure.partition if failure.partition is not None else -1


def _array_record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})

