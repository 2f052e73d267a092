"""What fedrec's ClientApp adds to a device update, in this process, without Ray: where the per-client time goes.

Times, side by side on the same devices, the device update alone
(:func:`~recsys_core.federated.device.train_on_device`) and the whole ClientApp ``train``
handler as a simulated node runs it (parse the message, load the partition, read and
write the device's state, pack the reply), then profiles the handler and prints the
functions that cost most outside the update itself.

    python -m simulations.benchmarks.client_overhead --config simulations/configs/ml-100k/sasrec.toml \
        --data-dir ../shared/datasets --devices 100
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from unittest import mock

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import train
from client.secure_aggregation import array_record
from recsys_core.config import apply_overrides, read_toml
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device import train_on_device
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.state import state_to_arrays
from recsys_core.federated.wire import CONFIG_KEY, CONFIG_RECORD, DEVICE_STATE_DIR_ENV, PARAMETERS_RECORD, ROUND_KEY


def train_message(config: FederatedConfig, shared: ArrayRecord, server_round: int) -> Message:
    return Message(RecordDict({PARAMETERS_RECORD: shared, CONFIG_RECORD: ConfigRecord(
        {CONFIG_KEY: config.to_json(), ROUND_KEY: server_round})}), dst_node_id=1, message_type="train")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [*args.set] + ([f'data.data_dir="{args.data_dir}"'] if args.data_dir else [])
    config = FederatedConfig.from_dict(apply_overrides(read_toml(args.config), overrides)).validate()
    data = load_federated_data(config.data, config.partition)
    shared = state_to_arrays(build_device_model(config, data.catalog, 1, 0).shared_state())
    partitions = list(range(min(args.devices, data.num_devices)))
    contexts = {p: Context(run_id=1, node_id=p + 1, node_config={"partition-id": p, "num-partitions": data.num_devices},
                           state=RecordDict(), run_config={}) for p in partitions}
    record = array_record(shared)
    # A Flower message needs the ids a SuperNode would give it.
    for attribute in ("_run_id", "_node_id", "_task_id"):
        setattr(TaskIdentity, attribute, 1)
    with tempfile.TemporaryDirectory() as devices, mock.patch.dict(os.environ, {DEVICE_STATE_DIR_ENV: devices}):
        for p in partitions[:3]:  # warm-up: caches, the model template
            train(train_message(config, record, 1), contexts[p])
        started = time.perf_counter()
        for p in partitions:
            train_on_device(config, data.device_split(p), shared, None, 2, p)
        update = (time.perf_counter() - started) / len(partitions)
        started = time.perf_counter()
        for p in partitions:
            train(train_message(config, record, 2), contexts[p])
        handler = (time.perf_counter() - started) / len(partitions)
        profile = cProfile.Profile()
        profile.enable()
        for p in partitions:
            train(train_message(config, record, 3), contexts[p])
        profile.disable()
    print(f"device update alone: {update * 1000:.1f} ms; ClientApp train handler: {handler * 1000:.1f} ms; "
          f"handler's own cost: {(handler - update) * 1000:.1f} ms per device ({len(partitions)} devices)\n")
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("cumulative").print_stats(args.top)
    print(stream.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
