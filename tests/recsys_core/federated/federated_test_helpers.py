"""What the device tests share: a small federated config and the global model's shared parameters."""

from __future__ import annotations

import numpy as np

from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import load_federated_data
from recsys_core.federated.device_model import build_device_model
from recsys_core.federated.state import state_to_arrays
from recsys_core.models import model_class
from recsys_core.models.base import config_from_dict

SMALL = {"gmf_dim": 8, "mlp_layers": [16, 8]}


def config(**sections) -> FederatedConfig:
    values = {"data": {"synthetic": {"n_users": 40, "n_items": 80, "seed": 1}},
              "model": {"name": "neumf", "options": SMALL}, "local": {"epochs": 1, "learning_rate": 0.01}}
    values.update(sections)
    model = model_class(values["model"]["name"])
    if not model.trains_with_gradients and "server" not in sections:
        # A count-based model releases its statistics in exactly its own number of rounds.
        options = values["model"].get("options", {})
        values["server"] = {"rounds": config_from_dict(model.config_class, options).statistics_rounds}
    return FederatedConfig.from_dict(values).validate()


def global_shared(cfg: FederatedConfig) -> dict[str, np.ndarray]:
    data = load_federated_data(cfg.data, cfg.partition)
    return state_to_arrays(build_device_model(cfg, data.catalog, 1, 0).shared_state())
