"""The Flower ClientApp: one device, its own rows, its private state in ``Context.state``.

Thin glue over :mod:`recsys_core.federated.device`: unpack the message, run the
device's update, pack the reply. A node trains on its dataset partition (simulation),
or, when its node config names an SDK store (``store-path``), on the feedback the app
recorded there (:mod:`client.device_store`). Private parameters (the user embedding) and their
optimiser state stay in ``Context.state``; only shared parameters are sent back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.device_store import StoreBackedDevice
from client.secure_aggregation import (
    add_masked,
    array_record,
    device_keys,
    exchange_settings,
    is_secure,
    record_arrays,
    unmask_record,
)
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
    PARTITION_KEY,
    PUBLIC_KEY_KEY,
    ROUND_KEY,
    SECURE_ARRAYS_RECORD,
    EvaluateReply,
    TrainReply,
)
from recsys_core.privacy.accountant import PrivacyAccountant

DEVICE_STATE_RECORD = "fedrec.device-state"

app = ClientApp()


def _partition_id(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise RuntimeError("this SuperNode has no 'partition-id' in its node config; start it with "
                           "--node-config \"partition-id=N num-partitions=M\"") from None


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
    partition_id = _partition_id(context)
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


@app.train()
def train(message: Message, context: Context) -> Message:
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


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
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


@app.query("unmask")
def unmask(message: Message, context: Context) -> Message:
    """Secure aggregation's second step (:func:`client.secure_aggregation.unmask_record`)."""
    return Message(RecordDict({SECURE_ARRAYS_RECORD: unmask_record(message, context)}), reply_to=message)


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Tells the server which partition this node holds, so sampling can be replayed exactly."""
    # The public key is registered for secure aggregation: one exchange per run, not per round.
    reply = RecordDict({METRICS_RECORD: MetricRecord({PARTITION_KEY: _partition_id(context)}),
                        CONFIG_RECORD: ConfigRecord({"role": "fedrec-device",
                                                     PUBLIC_KEY_KEY: device_keys(context).public_key})})
    return Message(reply, reply_to=message)
