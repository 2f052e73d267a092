"""The runnable examples run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys_core.bundle import ModelBundle, write_bundle
from recsys_core.federated.state import state_to_arrays
from recsys_core.models import CatalogInfo, build_model
from simulations.examples import sdk_quickstart


def test_the_sdk_quickstart_records_personalises_and_recommends(tmp_path: Path, capsys) -> None:
    model = build_model("neumf", CatalogInfo(1, 50), {"gmf_dim": 4, "mlp_layers": [8, 4]})
    bundle = write_bundle(tmp_path / "bundle", ModelBundle(
        "neumf", {"gmf_dim": 4, "mlp_layers": [8, 4]}, 50, state_to_arrays(model.shared_state()), {},
        {"item_ids": np.array([str(i) for i in range(50)]), "item_popularity": np.arange(50.0)}))
    store = tmp_path / "user.store"
    assert sdk_quickstart.main(["--bundle", str(bundle), "--store", str(store)]) == 0
    first = capsys.readouterr().out
    assert "cold start" in first and "positives on the device: ['3', '17', '42']" in first
    assert sdk_quickstart.main(["--bundle", str(bundle), "--store", str(store)]) == 0
    assert "returning user" in capsys.readouterr().out
