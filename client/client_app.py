"""The Flower ClientApp: one device, its own rows, its private state in ``Context.state``.

Thin glue over :mod:`recsys_core.federated.device`: unpack the message, run the
device's update, pack the reply. A node trains on its dataset partition (simulation),
or, when its node config names an SDK store (``store-path``), on the feedback the app
recorded there (:mod:`client.device_store`). Private parameters (the user embedding) and their
optimiser state stay in ``Context.state``; only shared parameters are sent back.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node_config import node_partition_id
from client.secure_aggregation import key_registration, unmask_record
from recsys_core.federated.wire import (
    CONFIG_RECORD,
    METRICS_RECORD,
    PARTITION_KEY,
    SECURE_ARRAYS_RECORD,
)

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    # Imported here, not at the top: the query messages below need no torch (client/device_handlers.py).
    from client.device_handlers import handle_train

    return handle_train(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    from client.device_handlers import handle_evaluate

    return handle_evaluate(message, context)


@app.query("unmask")
def unmask(message: Message, context: Context) -> Message:
    """Secure aggregation's second step (:func:`client.secure_aggregation.unmask_record`)."""
    return Message(RecordDict({SECURE_ARRAYS_RECORD: unmask_record(message, context)}), reply_to=message)


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Tells the server which partition this node holds, so sampling can be replayed exactly."""
    # The public key is registered for secure aggregation: one exchange per run, not per round.
    reply = RecordDict({METRICS_RECORD: MetricRecord({PARTITION_KEY: node_partition_id(context)}),
                        CONFIG_RECORD: ConfigRecord({"role": "fedrec-device",
                                                     **key_registration(context)})})
    return Message(reply, reply_to=message)
