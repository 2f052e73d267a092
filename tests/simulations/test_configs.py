"""Every ready-made config in simulations/configs/ parses, validates and sits where its contents say.

The layout is ``simulations/configs/<dataset>/<model>.toml`` for federated runs (a variant of the
same model is ``<model>-<variant>.toml``) and ``simulations/configs/<dataset>/centralized/<model>.toml``
for centralized ones: a typo or a misplaced file fails here, not in a user's run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core.config import read_toml
from recsys_core.experiment import ExperimentConfig
from recsys_core.federated.config import FederatedConfig

CONFIGS = Path(__file__).resolve().parents[2] / "simulations" / "configs"
FEDERATED = sorted(CONFIGS.glob("*/*.toml"))
CENTRALIZED = sorted(CONFIGS.glob("*/centralized/*.toml"))


def _name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_every_config_is_in_the_layout() -> None:
    # A config one folder too deep or too shallow would be skipped by the tests below.
    assert FEDERATED and CENTRALIZED
    assert sorted(CONFIGS.rglob("*.toml")) == sorted(FEDERATED + CENTRALIZED)


@pytest.mark.parametrize("path", FEDERATED, ids=_name)
def test_federated_configs_validate(path: Path) -> None:
    config = FederatedConfig.from_dict(read_toml(path)).validate()
    # A config runs private, or says in the file that it does not (and its results say NOT PRIVATE).
    assert config.privacy_shortfall() is None or config.private is False
    assert config.require_private() is config
    assert config.server.rounds > 0
    # The folder says which dataset it runs on, the file name which model (and variant).
    assert path.parent.name == config.data.dataset
    assert path.stem == config.model.name or path.stem.startswith(f"{config.model.name}-")


@pytest.mark.parametrize("path", CENTRALIZED, ids=_name)
def test_centralized_configs_validate(path: Path) -> None:
    config = ExperimentConfig.from_dict(read_toml(path))
    # The folder says which dataset it trains on, the file name which model.
    assert path.parents[1].name == config.data.dataset
    assert path.stem == config.model.name


@pytest.mark.parametrize("path", FEDERATED + CENTRALIZED, ids=_name)
def test_configs_start_with_a_one_line_header(path: Path) -> None:
    # "# <what it runs>: <measured result or purpose>", then settings or comments on them.
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ": " in first, first
