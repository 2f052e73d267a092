"""What one device does in a round: train on its own rows, or evaluate on them.

A device holds its users' rows only, with those users renumbered from 0. It starts
each round from the global model and the :class:`~recsys_core.federated.state.DeviceState`
it kept from the last one; only the *shared* parameters go back to the server. Every
random draw is seeded by ``(run seed, round, partition)``, so a round can be replayed exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from recsys_core.data.sampling import SeenItems
from recsys_core.data.splits import DatasetSplit
from recsys_core.federated.config import FederatedConfig, require_gradient_model
from recsys_core.federated.device_model import device_seed, fresh_device_model, load_device_model
from recsys_core.federated.private_round import train_with_local_dp
from recsys_core.federated.state import (
    Arrays,
    DeviceState,
    TrainOutcome,
    optimizer_state_from_arrays,
    optimizer_state_to_arrays,
    state_to_arrays,
)
from recsys_core.metrics import MetricSums
from recsys_core.models import CatalogInfo, Recommender
from recsys_core.privacy.secrets import USER_LEVEL_SHARE_SECRET, secret_generator
from recsys_core.training import evaluate_model, make_optimizer, run_local_epochs, seeded


class SimulatedDeviceError(RuntimeError):
    """Raised by fault injection (``simulation.failing_partitions`` / ``failure_probability``)."""


def inject_faults(config: FederatedConfig, server_round: int, partition_id: int) -> None:
    """Fails this call if the simulation config says this device breaks now."""
    faults = config.simulation
    if partition_id in faults.failing_partitions:
        raise SimulatedDeviceError(f"partition {partition_id} is configured to fail (simulation.failing_partitions)")
    if faults.failure_probability > 0:
        draw = np.random.default_rng([config.seed, server_round, partition_id, 7]).random()
        if draw < faults.failure_probability:
            raise SimulatedDeviceError(f"partition {partition_id} dropped out (simulation.failure_probability)")


def train_on_device(
    config: FederatedConfig,
    split: DatasetSplit,
    shared: Arrays,
    state: DeviceState | None,
    server_round: int,
    partition_id: int,
) -> TrainOutcome:
    """One round of local training; returns the new shared parameters and the device's new state.

    Under user-level DP the outcome carries the clipped (and, with distributed noise,
    noised) update, a count of 1 and no loss: the exact figures would sit outside the
    user-level guarantee.
    """
    outcome = _train(config, split, shared, state, server_round, partition_id)
    if not config.privacy.user_level.enabled or outcome.declined:
        return outcome
    # Imported here: the accountants behind this module import Opacus, which costs a second or more.
    from recsys_core.privacy.user_level import distributed_noise_std, privatize_update

    user_level = config.privacy.user_level
    update = {name: np.asarray(outcome.shared_parameters[name]) - np.asarray(shared[name]) for name in shared}
    noise_std = None
    if user_level.noise_placement == "distributed":
        noise_std = distributed_noise_std(user_level.noise_multiplier, user_level.clip_norm,
                                          user_level.min_surviving_devices)
    # OS entropy: the server knows the run seed, and a noise share it can regenerate hides nothing.
    secret = secret_generator(config.privacy.noise_source, config.seed, server_round, partition_id + 1,
                              USER_LEVEL_SHARE_SECRET)
    # A count-based model releases some arrays per round; the others' updates are zero for every
    # device, so they get no noise and stay exactly zero.
    released = config.released_arrays(server_round) or tuple(update)
    noised = privatize_update({name: update[name] for name in released}, user_level.clip_norm, noise_std, secret)
    clipped = {name: noised[name] if name in noised else np.zeros_like(update[name]) for name in update}
    return replace(outcome, shared_parameters={}, num_examples=1, train_loss=float("nan"), clipped_update=clipped)


def _train(
    config: FederatedConfig,
    split: DatasetSplit,
    shared: Arrays,
    state: DeviceState | None,
    server_round: int,
    partition_id: int,
) -> TrainOutcome:
    inject_faults(config, server_round, partition_id)
    if config.privacy.local.enabled:
        require_gradient_model(config.model.name)
    model = fresh_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, partition_id)
    load_device_model(model, shared, state)
    if config.privacy.local.enabled:
        return train_with_local_dp(config, split, model, shared, state, server_round, partition_id)
    local = config.local
    if not model.trains_with_gradients:
        model.fit_statistics_round(split.train, server_round)
        return TrainOutcome(state_to_arrays(model.shared_state()), DeviceState({}, {}), 1, 0.0)
    named = dict(model.named_parameters())
    shared_parameters = [p for n, p in named.items() if not model.is_private(n)]
    private_names = [n for n in named if model.is_private(n)]
    shared_optimizer = make_optimizer(shared_parameters, local.optimizer, local.learning_rate, local.weight_decay)
    optimizers = [shared_optimizer]
    private_optimizer = None
    if private_names:
        private_optimizer = make_optimizer([named[n] for n in private_names], local.optimizer,
                                           local.private_learning_rate or local.learning_rate, local.weight_decay)
        if state is not None and state.optimizer_state:
            restored = private_optimizer.state_dict()
            restored["state"] = optimizer_state_from_arrays(state.optimizer_state)
            private_optimizer.load_state_dict(restored)
        optimizers.append(private_optimizer)
    regularizer = _proximal_term(shared_parameters, local.proximal_mu) if local.proximal_mu > 0 else None
    generator = np.random.default_rng(device_seed(config.seed, server_round, partition_id))
    with seeded(device_seed(config.seed, server_round, partition_id)):
        losses = run_local_epochs(model, split.train, optimizers, local.epochs, local.batch_size, generator,
                                  regularizer)
    new_state = DeviceState(
        state_to_arrays(model.private_state()),
        {} if private_optimizer is None else optimizer_state_to_arrays(private_optimizer),
    )
    return TrainOutcome(state_to_arrays(model.shared_state()), new_state, model.example_count(split.train),
                        losses[-1])


def _proximal_term(parameters: list[torch.nn.Parameter], mu: float) -> Callable[[], torch.Tensor]:
    anchors = [parameter.detach().clone() for parameter in parameters]

    def proximal() -> torch.Tensor:
        return 0.5 * mu * torch.stack([((p - a) ** 2).sum() for p, a in zip(parameters, anchors)]).sum()

    return proximal


def evaluate_on_device(
    config: FederatedConfig,
    split: DatasetSplit,
    shared: Arrays,
    state: DeviceState | None,
    part: str,
    partition_id: int,
) -> MetricSums:
    """Ranks the device's held-out items (``valid`` or ``test``) with the global model and its private state."""
    model = fresh_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, partition_id)
    load_device_model(model, shared, state)
    if not model.trains_with_gradients and not shared:
        model.fit_statistics(split.train)
    refit_private_parameters(config, model, split, partition_id)
    seen = SeenItems.from_logs(split.train, split.valid, split.test)
    return evaluate_model(model, split, "valid" if part == "valid" else "test", seen, config.evaluation)


#: Stands in for the round number in the seed of a refit, which happens outside any training round.
REFIT_ROUND_TAG = 2**31 - 1


def refit_private_parameters(config: FederatedConfig, model: Recommender, split: DatasetSplit,
                             partition_id: int) -> None:
    """Fits the private parameters alone to the loaded global model (``local.private_refit_epochs``).

    The shared parameters stay as the server sent them. Seeded by the run seed and the
    partition, so the same global model always gives the same rankings.
    """
    local = config.local
    private = [parameter for name, parameter in model.named_parameters() if model.is_private(name)]
    if local.private_refit_epochs == 0 or not private or not model.trains_with_gradients:
        return
    optimizer = make_optimizer(private, local.optimizer, local.private_learning_rate or local.learning_rate,
                               local.weight_decay)
    seed = device_seed(config.seed, REFIT_ROUND_TAG, partition_id)
    with seeded(seed):
        run_local_epochs(model, split.train, [optimizer], local.private_refit_epochs, local.batch_size,
                         np.random.default_rng(seed))
