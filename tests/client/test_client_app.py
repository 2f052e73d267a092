"""The ClientApp's durable state: a device's privacy accountant never goes back, whatever the server replays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import train
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.state import state_to_arrays
from recsys_core.federated.state_file import DeviceStateError
from recsys_core.federated.wire import CONFIG_KEY, CONFIG_RECORD, PARAMETERS_RECORD, ROUND_KEY
from recsys_core.privacy.accountant import PrivacyAccountant

N_DEVICES = 4


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


def local_dp_config(target_epsilon: float) -> FederatedConfig:
    return FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": N_DEVICES, "n_items": 30, "seed": 3}},
        "model": {"name": "neumf", "options": {"gmf_dim": 4, "mlp_layers": [8, 4]}},
        "local": {"epochs": 1},
        "server": {"rounds": 5, "devices_per_round": N_DEVICES, "min_devices": 1},
        "privacy": {"local": {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": target_epsilon,
                              "target_delta": 1e-3}},
        "private": False,
    })


def train_message(config: FederatedConfig, server_round: int) -> Message:
    shared = state_to_arrays(build_device_model(config, config_catalog(config), 1, 0).shared_state())
    return Message(RecordDict({
        PARAMETERS_RECORD: ArrayRecord({name: Array(value) for name, value in shared.items()}),
        CONFIG_RECORD: ConfigRecord({CONFIG_KEY: config.to_json(), ROUND_KEY: server_round})}),
        dst_node_id=1, message_type="train")


def config_catalog(config: FederatedConfig):
    from recsys_core.federated.data import load_federated_data

    return load_federated_data(config.data, config.partition).manifest(config.data.dataset).catalog()


def restarted_device(tmp_path: Path) -> Context:
    """A fresh node process for partition 0 (nothing in memory); its state folder survives restarts."""
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": N_DEVICES,
                                                     "state-dir": str(tmp_path / "devices")},
                   state=RecordDict(), run_config={})


def accountant_of(reply: Message) -> PrivacyAccountant:
    return PrivacyAccountant.from_dict(json.loads(str(reply.content[CONFIG_RECORD]["privacy-accountant"])))


def spent(reply: Message) -> tuple[int, bool]:
    """The steps of the accountant a reply carries, and whether the device declined."""
    return accountant_of(reply).total_steps, bool(reply.content["metrics"]["declined"])


def test_a_replayed_round_is_counted_on_top_of_the_spend_it_replays(tmp_path: Path) -> None:
    config = local_dp_config(target_epsilon=1000.0)
    first, _ = spent(train(train_message(config, 1), restarted_device(tmp_path)))
    second, _ = spent(train(train_message(config, 2), restarted_device(tmp_path)))
    assert second == 2 * first
    # The server died after round 2's update left this device and resumed from round 1's checkpoint: it asks
    # for round 2 again. The model restarts from the state before round 2; the spend does not.
    replayed, declined = spent(train(train_message(config, 2), restarted_device(tmp_path)))
    assert not declined and replayed == 3 * first


def test_a_replayed_round_that_would_overspend_the_budget_is_declined(tmp_path: Path) -> None:
    probe = local_dp_config(target_epsilon=1000.0)
    one_round = accountant_of(train(train_message(probe, 1), restarted_device(tmp_path / "probe")))
    steps = one_round.total_steps
    two_rounds = PrivacyAccountant(one_round.name, one_round.history * 2).epsilon(1e-3)
    # A budget that fits two rounds and not three.
    config = local_dp_config(target_epsilon=two_rounds * 1.01)
    for server_round in (1, 2):
        assert not spent(train(train_message(config, server_round), restarted_device(tmp_path)))[1]
    replayed, declined = spent(train(train_message(config, 2), restarted_device(tmp_path)))
    assert declined and replayed == 2 * steps


def test_a_damaged_state_file_is_one_error_naming_it(tmp_path: Path) -> None:
    config = local_dp_config(target_epsilon=1000.0)
    train(train_message(config, 1), restarted_device(tmp_path))
    state_file = tmp_path / "devices" / "device-0.npz"
    data = bytearray(state_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state_file.write_bytes(bytes(data))
    with pytest.raises(DeviceStateError, match=r"device-0.npz: this device's state file is damaged .* restored"):
        train(train_message(config, 2), restarted_device(tmp_path))
    assert np.frombuffer(bytes(data), dtype=np.uint8).size == state_file.stat().st_size  # nothing overwritten


def test_after_a_replayed_round_the_next_one_counts_on_top_of_the_replay(tmp_path: Path) -> None:
    config = local_dp_config(target_epsilon=1000.0)
    first, _ = spent(train(train_message(config, 1), restarted_device(tmp_path)))
    # The server lost round 1 and asked again: the state file now holds two generations tagged round 1.
    assert spent(train(train_message(config, 1), restarted_device(tmp_path)))[0] == 2 * first
    # Round 2 counts on top of the replay (the current file), not of the first run (the previous generation).
    assert spent(train(train_message(config, 2), restarted_device(tmp_path)))[0] == 3 * first


@pytest.mark.parametrize(("model", "keeps_state"), [("sasrec", False), ("neumf", True)])
def test_a_device_writes_state_only_when_it_has_some_to_keep(tmp_path: Path, model: str, keeps_state: bool) -> None:
    options = {"sasrec": {"hidden_dim": 8, "max_length": 5, "num_blocks": 1}, "neumf": {"gmf_dim": 4,
                                                                                       "mlp_layers": [8, 4]}}[model]
    config = FederatedConfig.from_dict({
        "data": {"synthetic": {"n_users": N_DEVICES, "n_items": 30, "seed": 3}},
        "model": {"name": model, "options": options}, "local": {"epochs": 1},
        "server": {"rounds": 2, "devices_per_round": N_DEVICES, "min_devices": 1}, "private": False})
    context = restarted_device(tmp_path)
    reply = train(train_message(config, 1), context)
    assert not reply.has_error() and int(reply.content["metrics"]["num-examples"]) > 0
    # SASRec keeps nothing between rounds (no private parameters, plain SGD, no accountant): no file per round.
    assert (tmp_path / "devices" / "device-0.npz").exists() is keeps_state
    assert bool(context.state.array_records) is keeps_state


def test_the_clientapp_answers_queries_without_loading_torch() -> None:
    # A deployed SuperNode starts a ClientApp process per message: the describe and unmask queries of
    # secure aggregation must not pay torch's import (about 2 s a process on 2 cores), only train and evaluate.
    import subprocess
    import sys

    probe = ("import sys, client.client_app as app; "
             "assert 'torch' not in sys.modules, 'torch'; "
             "from client.device_handlers import handle_train; "
             "assert 'torch' in sys.modules")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
