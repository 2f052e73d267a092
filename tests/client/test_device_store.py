"""A SuperNode whose node config names an SDK store trains on the app's recorded feedback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import train
from client.device_store import StoreBackedDevice
from client.sdk.device import Device
from client.sdk.store import KeySource
from recsys_core.bundle import ModelBundle, write_bundle
from recsys_core.errors import FedrecError
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.state import state_to_arrays
from recsys_core.federated.wire import CONFIG_KEY, CONFIG_RECORD, PARAMETERS_RECORD, ROUND_KEY
from recsys_core.models import CatalogInfo, build_model

N_ITEMS = 40
OPTIONS = {"gmf_dim": 4, "mlp_layers": [8, 4]}
KEY = bytes(range(32))


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


@pytest.fixture
def node(tmp_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    model = build_model("neumf", CatalogInfo(1, N_ITEMS), OPTIONS)
    shared = state_to_arrays(model.shared_state())
    write_bundle(tmp_path / "bundle", ModelBundle("neumf", OPTIONS, N_ITEMS, shared, {},
                                                  {"item_ids": np.array([f"m{i}" for i in range(N_ITEMS)])}))
    (tmp_path / "user.key").write_text(KEY.hex())
    device = Device.open(tmp_path / "user.store", KeySource.from_app_key(KEY))
    device.load_bundle(tmp_path / "bundle")
    for step, item in enumerate(["m3", "m7", "m9", "m12", "m20"]):
        device.record(item, "purchase", timestamp=step)
    node_config = {"partition-id": 0, "num-partitions": 1, "store-path": str(tmp_path / "user.store"),
                   "store-key-file": str(tmp_path / "user.key"), "bundle-path": str(tmp_path / "bundle")}
    return node_config, shared


def train_message(shared: dict[str, np.ndarray], server_round: int) -> Message:
    config = FederatedConfig.from_dict({"model": {"name": "neumf", "options": OPTIONS}, "local": {"epochs": 1}})
    return Message(RecordDict({
        PARAMETERS_RECORD: ArrayRecord({name: Array(value) for name, value in shared.items()}),
        CONFIG_RECORD: ConfigRecord({CONFIG_KEY: config.to_json(), ROUND_KEY: server_round})}),
        dst_node_id=1, message_type="train")


def test_the_client_app_trains_on_recorded_feedback_and_keeps_its_state_in_the_store(node, tmp_path: Path) -> None:
    node_config, shared = node
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    reply = train(train_message(shared, 1), context)
    metrics = reply.content["metrics"]
    # leave-one-out: 5 positives, the last two held out for validation and test
    assert metrics["num-examples"] == 3 and metrics["declined"] == 0
    assert set(reply.content[PARAMETERS_RECORD]) == set(shared)  # shared parameters only
    device = Device.open(tmp_path / "user.store", KeySource.from_app_key(KEY))
    state = device.training_state()
    assert any(name.startswith("private/") for name in state) and any(n.startswith("optimizer/") for n in state)
    assert device.positives() == ["m3", "m7", "m9", "m12", "m20"]  # the feedback is untouched
    # round 2 starts from the stored private parameters, as a device that restarted would
    stored = StoreBackedDevice.from_node_config(node_config)
    assert stored is not None and stored.read_state() is not None
    train(train_message(shared, 2), Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                                            run_config={}))
    after = Device.open(tmp_path / "user.store", KeySource.from_app_key(KEY)).training_state()
    assert any(not np.array_equal(after[name], state[name]) for name in state if name.startswith("private/"))


def test_a_store_without_a_key_or_bundle_is_refused_with_the_missing_key_named(node) -> None:
    node_config, _ = node
    with pytest.raises(FedrecError, match="needs store-key-file or store-passphrase-env"):
        StoreBackedDevice.from_node_config({k: v for k, v in node_config.items() if k != "store-key-file"})
    with pytest.raises(FedrecError, match="needs bundle-path"):
        StoreBackedDevice.from_node_config({k: v for k, v in node_config.items() if k != "bundle-path"})
    with pytest.raises(FedrecError, match="STORE_PASS is not set"):
        StoreBackedDevice.from_node_config({**{k: v for k, v in node_config.items() if k != "store-key-file"},
                                            "store-passphrase-env": "STORE_PASS"})
