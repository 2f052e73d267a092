"""Aggregation strategies: Flower's own, driven round by round by :mod:`server.rounds`.

We use the strategies for their aggregation maths (weighted averaging, server
optimisers) and do node sampling ourselves, seeded per round, so that a resumed
run samples exactly the clients an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedProx, FedYogi, Strategy

from recsys_core.federated.config import ServerConfig

#: Server-optimiser moments of Flower's FedOpt strategies: the only strategy state that outlives a round
#: (the current global arrays are handed to the strategy again by ``configure_train``).
STATE_ATTRIBUTES = ("m_t", "v_t")


def build_strategy(config: ServerConfig, proximal_mu: float) -> Strategy:
    """The Flower strategy named in the config, sending to every node we hand it."""
    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1,
              "min_available_nodes": 1}
    if config.strategy == "fedprox":
        return FedProx(proximal_mu=proximal_mu, **common)
    if config.strategy == "fedadam":
        return FedAdam(eta=config.server_learning_rate, tau=config.adaptivity_tau, **common)
    if config.strategy == "fedyogi":
        return FedYogi(eta=config.server_learning_rate, tau=config.adaptivity_tau, **common)
    if config.strategy == "fedadagrad":
        return FedAdagrad(eta=config.server_learning_rate, tau=config.adaptivity_tau, **common)
    # FedAvg with a server learning rate: FedAvgM without momentum scales the mean update.
    strategy = FedAvgM(server_learning_rate=config.server_learning_rate, server_momentum=0.0, **common)
    # FedAvgM tracks the current model only when its server step is on, which it decides once from the
    # initial rate; a scheduled rate may leave 1.0 later, so keep it on (at rate 1 the step is the mean).
    strategy.server_opt = True
    return strategy


class SampledGrid:
    """A view of the grid that offers only the nodes we sampled, so the strategy sends to exactly them."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)


def set_learning_rate(strategy: Strategy, rate: float) -> None:
    """Sets this round's server learning rate (``server.final_server_learning_rate`` schedules it)."""
    if isinstance(strategy, FedAvgM):
        strategy.server_learning_rate = rate
    elif isinstance(strategy, (FedAdam, FedYogi, FedAdagrad)):
        strategy.eta = rate


def fedadam_step(strategy: FedAdam, current: dict[str, np.ndarray], aggregated: dict[str, np.ndarray],
                 server_round: int) -> dict[str, np.ndarray]:
    """Flower's FedAdam update from already-aggregated arrays, with the strategy's own state and settings.

    ``FedAdam.aggregate_train`` averages replies by example count first; DP-FedAvg
    needs its own noisy mean, so this applies the same server-optimiser maths to it
    (and keeps ``m_t``/``v_t`` on the strategy, where checkpoints look for them).
    """
    delta = {name: aggregated[name] - current[name] for name in current}
    if not strategy.m_t:
        strategy.m_t = {name: np.zeros_like(value) for name, value in delta.items()}
    if not strategy.v_t:
        strategy.v_t = {name: np.zeros_like(value) for name, value in delta.items()}
    strategy.m_t = {n: strategy.beta_1 * strategy.m_t[n] + (1 - strategy.beta_1) * delta[n] for n in current}
    strategy.v_t = {n: strategy.beta_2 * strategy.v_t[n] + (1 - strategy.beta_2) * delta[n] ** 2 for n in current}
    # Flower's bias-corrected step size, with its round offset.
    eta = (strategy.eta * np.sqrt(1 - np.power(strategy.beta_2, server_round + 1.0))
           / (1 - np.power(strategy.beta_1, server_round + 1.0)))
    return {n: (current[n] + eta * strategy.m_t[n] / (np.sqrt(strategy.v_t[n]) + strategy.tau)).astype(current[n].dtype)
            for n in current}


def apply_mean_update(strategy: Strategy | None, current: dict[str, np.ndarray], mean_update: dict[str, np.ndarray],
                      server_round: int, server_learning_rate: float) -> dict[str, np.ndarray]:
    """The new global arrays from a mean update the server computed itself (DP-FedAvg, secure aggregation).

    The same step as the strategy's own aggregation from that mean: FedAdam's server
    optimiser, FedAvg's ``current + server lr * mean``, FedProx's plain average.
    """
    if isinstance(strategy, FedAdam):
        return fedadam_step(strategy, current, {name: current[name] + mean_update[name] for name in current},
                            server_round)
    rate = 1.0 if isinstance(strategy, FedProx) else server_learning_rate
    return {name: (np.asarray(value, dtype=np.float64) + rate * mean_update[name]).astype(value.dtype)
            for name, value in current.items()}


def configure_train(strategy: Strategy, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                    grid: Grid, node_ids: list[int]) -> list[Message]:
    """Training messages for exactly ``node_ids`` (the strategy also records the round's arrays)."""
    return list(strategy.configure_train(server_round, arrays, config, SampledGrid(grid, node_ids)))


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """The strategy's round-to-round state as flat arrays, for checkpoints."""
    flat: dict[str, np.ndarray] = {}
    for attribute in STATE_ATTRIBUTES:
        value = getattr(strategy, attribute, None)
        if isinstance(value, dict):
            for name, array in value.items():
                flat[f"{attribute}/{name}"] = np.asarray(array)
    return flat


def restore_strategy_state(strategy: Strategy, flat: dict[str, np.ndarray]) -> None:
    """Puts checkpointed state back into a fresh strategy of the same kind."""
    restored: dict[str, dict[str, np.ndarray]] = {}
    for key, array in flat.items():
        attribute, name = key.split("/", 1)
        restored.setdefault(attribute, {})[name] = array
    for attribute, values in restored.items():
        if attribute in STATE_ATTRIBUTES:
            setattr(strategy, attribute, values)
