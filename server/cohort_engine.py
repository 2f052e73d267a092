"""The cohort engine: every simulated device in this process, no framework between devices and server.

``fedrec simulate --engine cohort`` (``simulation.engine = "cohort"``). The round loop,
the aggregation core, the run directory, the ledger and the record chain are the ones
the Flower engine uses (:class:`~server.round_loop.RoundLoop`); the devices run the same
``recsys_core`` code a Flower node runs, and their replies cross the same typed wire
records (:class:`~recsys_core.federated.wire.TrainReply`, ``EvaluateReply``) and server
checks, so a seeded run gives the same global model under both engines
(``tests/server/test_cohort_engine.py``). What the cohort engine leaves out is the
transport: Ray workers, message queues, serialisation, the ~30 ms Flower spends on each
sampled device. A device costs its private state (:class:`CohortStates`), not a node.

It simulates what a deployment cannot show, not what it does: secure aggregation's
masking runs only under the Flower engine, and a config that asks for it here is refused
(:meth:`FederatedConfig.validate`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_core.federated.aggregation import Arrays, RoundSum, UserLevelSum, add_round_sums, sum_plain_updates
from recsys_core.federated.cohort import DeviceError, DeviceProgress, evaluate_cohort, train_cohort
from recsys_core.federated.cohort_batch import evaluate_cohort_batched, evaluation_blockers, train_one_step_cohort
from recsys_core.federated.cohort_state import COHORT_STATES_FILE, CohortStates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData
from recsys_core.federated.manifest import FederationManifest
from recsys_core.federated.records import AccountantHistory, DeviceFailure
from recsys_core.federated.robust import PlainUpdate, screen_updates
from recsys_core.federated.wire import EvaluateReply, MalformedReplyError, TrainReply, update_problem
from recsys_core.metrics import metric_names
from recsys_core.privacy.accountant import PrivacyAccountant
from recsys_core.training import torch_threads
from server.round_loop import RoundCallback, RoundLoop, TrainingExchange, sum_evaluations
from server.run_directory import RunDirectory

__all__ = ["COHORT_STATES_FILE", "STREAM_CHUNK", "CohortRun"]

logger = logging.getLogger("fedrec.server")

#: Devices whose user-level updates are held at once before they are added to the round's sum.
STREAM_CHUNK = 1024


class CohortRun(RoundLoop):
    """The round loop with every device in this process; ``data`` is the simulated devices' data.

    The server's side still reads only the manifest and the replies: ``data`` is handed to
    :func:`~recsys_core.federated.cohort.train_cohort`, the devices' side, and nothing else.
    """

    def __init__(self, config: FederatedConfig, run_directory: RunDirectory, manifest: FederationManifest,
                 data: FederatedData, on_round: RoundCallback | None = None,
                 on_device: DeviceProgress | None = None) -> None:
        super().__init__(config, run_directory, manifest, on_round)
        self.data = data
        #: One batched gradient per round, and devices evaluated together, where the config allows it
        #: (recsys_core/federated/cohort_batch.py).
        self.batched = config.simulation.batching != "off" and not config.one_step_blockers()
        self.batched_evaluation = config.simulation.batching != "off" and not evaluation_blockers(config)
        self.states = CohortStates()
        self.on_device = on_device

    @property
    def states_file(self) -> Path:
        return self.run_directory.devices / COHORT_STATES_FILE

    def run(self, resume: bool = False) -> dict[str, Any]:
        """The whole run; returns the summary. A resumed run restores every device's state from the checkpoint's
        round first."""
        if resume and (checkpoint := self.run_directory.read_checkpoint()) is not None:
            self.states = CohortStates.load(self.states_file, checkpoint.completed_round)
        return self.run_rounds(resume)

    def connect(self) -> list[int]:
        return list(range(self.data.num_devices))

    def save_device_states(self, completed_round: int) -> None:
        self.states.save(self.states_file, completed_round)

    def training_exchange(self, current: Arrays, partitions: list[int], server_round: int) -> TrainingExchange:
        started = time.perf_counter()
        exchange = TrainingExchange(round_sum=None)
        array_bytes = sum(value.nbytes for value in current.values())
        exchange.bytes_down = array_bytes * len(partitions)
        one_by_one = partitions
        batched_sum = None
        if self.batched:
            with torch_threads(self.config.simulation.cohort_threads or os.cpu_count() or 1):
                batched = train_one_step_cohort(self.config, self.data, current, partitions, server_round,
                                                self.states)
            replies = [TrainReply(p, False, n, loss) for p, n, loss in
                       zip(batched.partitions, batched.num_examples, batched.train_losses)]
            if all(self.accept(reply, exchange) is not None for reply in replies) and \
                    update_problem(batched.round_sum.update_sum, current) is None:
                batched_sum = batched.round_sum
                for partition, state in batched.device_states.items():
                    self.states.put(partition, state)
                exchange.joined += batched.partitions
                exchange.bytes_up += array_bytes * len(batched.partitions)
                exchange.failures += [DeviceFailure(p, f"{type(e).__name__}: {e}") for p, e in batched.failed.items()]
                one_by_one = batched.one_by_one
            else:
                # A device's loss or update is unusable; only the per-device path can set it aside alone.
                exchange = TrainingExchange(round_sum=None, bytes_down=exchange.bytes_down)
        if self.config.privacy.user_level.enabled:
            round_sum = self.sum_user_level_updates(current, one_by_one, server_round, exchange, array_bytes)
        else:
            updates, outlying = screen_updates(
                self.config, current, self.train_one_by_one(current, one_by_one, server_round, exchange, array_bytes))
            exchange.failures += outlying
            round_sum = sum_plain_updates(self.config, current, [update[1:] for update in updates])
        exchange.round_sum = round_sum if batched_sum is None else add_round_sums(batched_sum, round_sum)
        exchange.failures.sort(key=lambda failure: failure.partition if failure.partition is not None else -1)
        exchange.joined.sort()
        logger.debug("round %d: %d devices in %.2f s", server_round, len(partitions), time.perf_counter() - started)
        return exchange

    def accept(self, sent: TrainReply, exchange: TrainingExchange) -> TrainReply | None:
        """The server's edge, as for a Flower reply: the same parse, the same checks; None (recorded) if refused."""
        try:
            return TrainReply.from_metrics(sent.to_metrics(), sent.to_config(), with_counts=True,
                                           max_examples=self.manifest.max_training_rows)
        except MalformedReplyError as error:
            exchange.failures.append(DeviceFailure(sent.partition_id, f"update rejected: {error}"))
            exchange.joined.append(sent.partition_id)
            return None

    def sum_user_level_updates(self, current: Arrays, partitions: list[int], server_round: int,
                               exchange: TrainingExchange, array_bytes: int) -> RoundSum:
        """The round's user-level sum, trained and added :data:`STREAM_CHUNK` devices at a time.

        Only a chunk's updates are held at once (22,363 Beauty devices' item k-NN updates took
        about 9 GB together); in sorted order, as the whole round would be added.
        """
        running = UserLevelSum(self.config, current)
        ordered = sorted(partitions)
        for start in range(0, len(ordered), STREAM_CHUNK):
            chunk = ordered[start:start + STREAM_CHUNK]
            for _, arrays, _, _ in self.train_one_by_one(current, chunk, server_round, exchange, array_bytes,
                                                         done_before=start, total=len(ordered)):
                running.add(arrays)
        return running.round_sum()

    def train_one_by_one(self, current: Arrays, partitions: list[int], server_round: int,
                         exchange: TrainingExchange, array_bytes: int, done_before: int = 0,
                         total: int | None = None) -> list[PlainUpdate]:
        """Each device's own update (the path every config can take); fills ``exchange``'s bookkeeping.

        ``done_before`` and ``total`` place these devices within a larger exchange, for the progress shown.
        """
        on_device = self.on_device
        if on_device is not None and (done_before or total is not None):
            overall = total if total is not None else len(partitions)
            report = on_device

            def on_device(exchange_name: str, done: int, _: int) -> None:
                report(exchange_name, done_before + done, overall)
        results = train_cohort(self.config, self.data, current, self.states, partitions, server_round,
                               on_device)
        updates = []
        for partition in sorted(results):
            result = results[partition]
            if isinstance(result, DeviceError):
                exchange.failures.append(DeviceFailure(partition, result.reason, result.detail))
                continue
            accountant = result.device_state.privacy_accountant
            reply = self.accept(TrainReply(partition, result.declined, result.num_examples, result.train_loss,
                                           result.privacy_epsilon, None if accountant is None
                                           else PrivacyAccountant.from_dict(accountant)), exchange)
            if reply is None:
                continue
            if reply.accountant is not None:
                exchange.local_privacy.append(AccountantHistory.of(partition, reply.accountant))
            if reply.declined:
                exchange.declined.append(partition)
                continue
            exchange.joined.append(partition)
            problem = update_problem(result.payload, current)
            if problem is not None:
                exchange.failures.append(DeviceFailure(partition, f"update rejected: {problem}"))
                continue
            updates.append((partition, result.payload, reply.num_examples or 0,
                            reply.train_loss if reply.train_loss is not None else float("nan")))
            exchange.bytes_up += array_bytes
        return updates

    def evaluate(self, shared: Arrays, partitions: list[int], part: str,
                 server_round: int) -> tuple[dict[str, float], int]:
        if self.batched_evaluation:
            try:
                with torch_threads(self.config.simulation.cohort_threads or os.cpu_count() or 1):
                    total = evaluate_cohort_batched(self.config, self.data, shared, partitions, part,
                                                    self.chunk_progress(part, len(partitions)))
                return total.means(), 0
            except Exception as error:  # a device's own failure: find it, and go on without it, one by one
                logger.warning("round %d: batched evaluation failed (%s); evaluating each device alone",
                               server_round, error)
        results = evaluate_cohort(self.config, self.data, shared, self.states, partitions, part, self.on_device)
        names = metric_names(self.config.evaluation)
        good: list[EvaluateReply] = []
        for partition, result in sorted(results.items()):
            if isinstance(result, DeviceError):
                logger.warning("round %d: partition %d failed to evaluate: %s", server_round, partition,
                               result.reason)
                continue
            try:
                good.append(EvaluateReply.from_metrics(EvaluateReply(partition, result).to_metrics(), names,
                                                       self.manifest.max_users))
            except MalformedReplyError as error:
                logger.warning("round %d: partition %d sent an unusable evaluation: %s", server_round, partition,
                               error)
        return sum_evaluations(good), len(partitions) - len(good)

    def chunk_progress(self, part: str, total: int) -> Callable[[int], None] | None:
        on_device = self.on_device
        if on_device is None:
            return None
        return lambda done: on_device(part, done, total)
