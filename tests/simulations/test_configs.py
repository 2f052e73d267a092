"""Every ready-made config in simulations/ parses and validates: a typo there fails here, not in a user's run."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core.config import read_toml
from recsys_core.experiment import ExperimentConfig
from recsys_core.federated.config import FederatedConfig

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"


@pytest.mark.parametrize("path", sorted(SIMULATIONS.glob("*.toml")), ids=lambda path: path.name)
def test_federated_configs_validate(path: Path) -> None:
    config = FederatedConfig.from_dict(read_toml(path)).validate()
    assert config.server.rounds > 0


@pytest.mark.parametrize("path", sorted((SIMULATIONS / "centralized").glob("*.toml")), ids=lambda path: path.name)
def test_centralized_configs_validate(path: Path) -> None:
    config = ExperimentConfig.from_dict(read_toml(path))
    # The file name says which dataset and model it trains.
    assert path.stem == f"{config.data.dataset}-{config.model.name}"
