"""The ClientApp's training and evaluation work: a device's data, its durable state, its update and its metrics.

:mod:`client.client_app` imports this on the first train or evaluate message only. The
secure-aggregation queries (describe, unmask) need none of it, and a deployed SuperNode
starts a fresh ClientApp process for every message, so they skip loading torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.device_store import StoreBackedDevice
from client.node_config import node_partition_id
from client.secure_aggregation import add_masked, array_record, exchange_settings, is_secure, record_arrays
from recsys_core.data.splits import DatasetSplit
from recsys_core.federated.config import FederatedConfig, config_from_json
from recsys_core.federated.data import FederatedData, load_federated_data
from recsys_core.federated.device import evaluate_on_device, train_on_device
from recsys_core.federated.secure_payload import evaluation_values, training_values
from recsys_core.federated.state import DeviceState
from recsys_core.federated.state_file import device_state_file, state_for_round, write_generation
from recsys_core.federated.wire import (
    CONFIG_KEY,
    CONFIG_RECORD,
    DEVICE_STATE_DIR_ENV,
    DEVICE_STATE_DIR_NODE_KEY,
    EVALUATION_PART_KEY,
    METRICS_RECORD,
    PARAMETERS_RECORD,
    ROUND_KEY,
    EvaluateReply,
    TrainReply,
)
from recsys_core.privacy.accountant import PrivacyAccountant

DEVICE_STATE_RECORD = "fedrec.device-state"


@dataclass
class DeviceData:
    """Where this node's training data and state live: a dataset partition, or the app's SDK store."""

    config: FederatedConfig
    partition_id: int
    split: DatasetSplit
    store: StoreBackedDevice | None

    def read_state(self, context: Context, server_round: int) -> DeviceState | None:
        if self.store is not None:
            return self.store.read_state()
        return read_device_state(context, _device_state_file(context, self.partition_id), server_round)

    def write_state(self, context: Context, state: DeviceState, server_round: int) -> None:
        if state.is_empty:
            return  # nothing to remember (a model without private parameters, no local DP): no file per round
        if self.store is not None:
            self.store.write_state(state)
        else:
            write_device_state(context, state, _device_state_file(context, self.partition_id), server_round)


def _setup(message: Message, context: Context) -> DeviceData:
    config = config_from_json(str(message.content[CONFIG_RECORD][CONFIG_KEY]))
    torch.set_num_threads(config.simulation.torch_threads_per_device)
    partition_id = node_partition_id(context)
    store = StoreBackedDevice.from_node_config(context.node_config)
    if store is not None:
        return DeviceData(config, partition_id, store.split(config), store)
    data: FederatedData = load_federated_data(config.data, config.partition)
    return DeviceData(config, partition_id, data.device_split(partition_id), None)


def _device_state_file(context: Context, partition_id: int) -> Path | None:
    """The device's own state file: its node config's folder, else the simulation launcher's; None keeps
    the state in ``Context.state`` only."""
    folder = context.node_config.get(DEVICE_STATE_DIR_NODE_KEY) or os.environ.get(DEVICE_STATE_DIR_ENV)
    return device_state_file(str(folder), partition_id) if folder else None


def read_device_state(context: Context, state_file: Path | None, server_round: int) -> DeviceState | None:
    """The device's state from ``Context.state``, else from its durable store after a restart
    (:func:`~recsys_core.federated.state_file.state_for_round`: the accountant never goes back)."""
    if DEVICE_STATE_RECORD in context.state.array_records:
        return DeviceState.from_arrays(record_arrays(context.state.array_records[DEVICE_STATE_RECORD]))
    return None if state_file is None else state_for_round(state_file, server_round)


def write_device_state(context: Context, state: DeviceState, state_file: Path | None, server_round: int) -> None:
    context.state[DEVICE_STATE_RECORD] = array_record(state.to_arrays())
    if state_file is not None:  # durable before the update leaves the device: its spend is on disk first
        write_generation(state_file, state, server_round)


def handle_train(message: Message, context: Context) -> Message:
    """Trains on this device's rows from the received model and replies with its update (masked under
    secure aggregation), its example count and its accountant."""
    device = _setup(message, context)
    config, partition_id = device.config, device.partition_id
    server_round = cast(int, message.content.config_records[CONFIG_RECORD][ROUND_KEY])
    outcome = train_on_device(
        config,
        device.split,
        record_arrays(message.content.array_records[PARAMETERS_RECORD]),
        device.read_state(context, server_round),
        server_round,
        partition_id,
    )
    device.write_state(context, outcome.device_state, server_round)
    accountant = outcome.device_state.privacy_accountant
    secure = is_secure(message)
    # A device whose privacy budget is spent declines with a normal reply. Under secure aggregation
    # its example count and loss travel inside the masked vector, not in clear.
    train_reply = TrainReply(
        partition_id, outcome.declined,
        num_examples=None if secure else outcome.num_examples,
        train_loss=None if secure else outcome.train_loss,
        # Under secure aggregation nothing per device travels in clear beyond what the threat model lists: the
        # accountant's history (the ledger needs it); its epsilon, which the history determines, stays home.
        privacy_epsilon=None if secure else outcome.privacy_epsilon,
        # The accountant's history (mechanism, sampling rate, steps): what the run's privacy ledger needs.
        accountant=None if accountant is None else PrivacyAccountant.from_dict(accountant))
    metrics = MetricRecord(train_reply.to_metrics())
    config_record = ConfigRecord(train_reply.to_config())
    if secure:
        reply = RecordDict({METRICS_RECORD: metrics, CONFIG_RECORD: config_record})
        if not outcome.declined:
            received = record_arrays(message.content.array_records[PARAMETERS_RECORD])
            settings = exchange_settings(message)
            values = training_values(settings.layout, received, outcome.payload, outcome.num_examples,
                                     outcome.train_loss, settings.weight_scale, config.privacy.user_level.enabled)
            add_masked(reply, message, context, values)
        return Message(reply, reply_to=message)
    reply = RecordDict({
        # Shared parameters, or under user-level DP the clipped update: never the private ones.
        PARAMETERS_RECORD: array_record(outcome.payload),
        METRICS_RECORD: metrics,
        CONFIG_RECORD: config_record,
    })
    return Message(reply, reply_to=message)


def handle_evaluate(message: Message, context: Context) -> Message:
    """Ranks this device's held-out rows under the received model and replies with the metric sums."""
    device = _setup(message, context)
    partition_id = device.partition_id
    sums = evaluate_on_device(
        device.config,
        device.split,
        record_arrays(message.content.array_records[PARAMETERS_RECORD]),
        device.read_state(context, cast(int, message.content.config_records[CONFIG_RECORD][ROUND_KEY]) + 1),
        str(message.content[CONFIG_RECORD][EVALUATION_PART_KEY]),
        partition_id,
    )
    if is_secure(message):
        reply = RecordDict({METRICS_RECORD: MetricRecord(EvaluateReply(partition_id).to_metrics()),
                            CONFIG_RECORD: ConfigRecord()})
        add_masked(reply, message, context, evaluation_values(exchange_settings(message).layout, sums))
        return Message(reply, reply_to=message)
    reply = RecordDict({METRICS_RECORD: MetricRecord(EvaluateReply(partition_id, sums).to_metrics())})
    return Message(reply, reply_to=message)
