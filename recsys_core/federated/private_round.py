"""A device's round under local (interaction-level) DP: DP-SGD on its own rows, or a declined round.

The device keeps its privacy accountant in its :class:`DeviceState` and declines a round
that would take it over budget. The DP machinery itself is :mod:`recsys_core.privacy.local_dp`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recsys_core.data.splits import DatasetSplit
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.device_model import device_seed
from recsys_core.federated.state import Arrays, DeviceState, TrainOutcome, optimizer_state_from_arrays, state_to_arrays
from recsys_core.models import Recommender
from recsys_core.privacy.secrets import LOCAL_DP_SECRET, secret_generator
from recsys_core.training import make_optimizer, seeded


def train_with_local_dp(
    config: FederatedConfig,
    split: DatasetSplit,
    model: Recommender,
    shared: Arrays,
    state: DeviceState | None,
    server_round: int,
    partition_id: int,
) -> TrainOutcome:
    """One round of local DP-SGD (:mod:`recsys_core.privacy.local_dp`), or a declined round.

    The device declines, with a normal outcome, when the round's planned steps would take
    its epsilon above ``privacy.local.target_epsilon``. The Poisson batches and the noise
    come from the device's own entropy, not from the run seed: the server knows the seed,
    and noise it can regenerate protects nothing. The reported ``train_loss`` is NaN: the
    exact local loss would leave the device outside the guarantee.
    """
    # Imported here: Opacus costs a second or more to import, and only DP devices need it.
    from recsys_core.privacy import local_dp
    from recsys_core.privacy.accountant import PrivacyAccountant

    privacy, local = config.privacy.local, config.local
    accountant = PrivacyAccountant(privacy.accountant)
    if state is not None and state.privacy_accountant is not None:
        accountant = PrivacyAccountant.from_dict(state.privacy_accountant)
    engine = local_dp.private_engine(model)
    work = engine.model
    seed = device_seed(config.seed, server_round, partition_id)
    sample_generator = np.random.default_rng(seed)
    with seeded(seed):
        first_epoch = work.private_training_samples(split.train, sample_generator)
    num_samples = local_dp.samples_count(first_epoch)

    def unchanged(reason: str) -> TrainOutcome:
        kept = state if state is not None else DeviceState(state_to_arrays(model.private_state()), {})
        kept = DeviceState(kept.private_parameters, kept.optimizer_state, accountant.to_dict())
        return TrainOutcome(dict(shared), kept, 0, float("nan"), declined=True, decline_reason=reason,
                            privacy_epsilon=accountant.epsilon(privacy.target_delta))

    if num_samples == 0:
        return unchanged("no training samples on this device")
    privacy.validate(min_local_examples=num_samples)
    schedule = local_dp.PoissonSchedule(num_samples, local.batch_size)
    steps = schedule.steps(local.epochs)
    if math.isfinite(privacy.target_epsilon) and accountant.would_exceed(
        target_epsilon=privacy.target_epsilon, delta=privacy.target_delta,
        noise_multiplier=privacy.noise_multiplier, sampling_rate=schedule.sampling_rate, steps=steps,
    ):
        return unchanged(f"privacy budget: {steps} more steps would exceed epsilon {privacy.target_epsilon} "
                         f"at delta {privacy.target_delta}")
    optimizer, auxiliary, private_parameters = _local_dp_optimizers(config, work, state)
    # OS entropy, unknown to the server (unless the config asks for a replayable run that is not private).
    secret = secret_generator(config.privacy.noise_source, config.seed, server_round, partition_id + 1,
                              LOCAL_DP_SECRET)
    noise_generator = secret  # ChaCha20 from OS entropy: the noise and the Poisson batches, one secret stream
    dp_optimizer = engine.optimizer(optimizer, noise_multiplier=privacy.noise_multiplier,
                                    clip_norm=privacy.per_sample_clip_norm, schedule=schedule,
                                    noise_generator=noise_generator)
    with seeded(seed):
        local_dp.run_private_epochs(engine, split.train, dp_optimizer, auxiliary, local.epochs, schedule,
                                    sample_generator, secret, noise_generator, first_epoch)
    accountant.record(privacy.noise_multiplier, schedule.sampling_rate, steps)
    new_state = DeviceState(
        state_to_arrays(work.private_state()),
        _parameter_state_to_arrays(private_parameters, [optimizer, *auxiliary]),
        accountant.to_dict(),
    )
    return TrainOutcome(state_to_arrays(work.shared_state()), new_state, model.example_count(split.train), float("nan"),
                        privacy_epsilon=accountant.epsilon(privacy.target_delta))


def _local_dp_optimizers(
    config: FederatedConfig, model: Recommender, state: DeviceState | None
) -> tuple[torch.optim.Optimizer, list[torch.optim.Optimizer], list[torch.nn.Parameter]]:
    """The optimiser DP wraps (per-sample parameters), plain ones for the rest, and the private parameters.

    Shared and private per-sample parameters sit in one optimiser (two learning-rate
    groups) so that Opacus clips each sample's gradient over both at once. The private
    parameters' optimiser state is restored from ``state``, indexed as without DP.
    """
    from recsys_core.privacy.local_dp import grouped_optimizer

    local = config.local
    named = dict(model.named_parameters())
    per_sample = {id(parameter) for parameter in model.per_sample_parameters()}
    private_rate = local.private_learning_rate or local.learning_rate

    def groups(in_per_sample: bool) -> list[tuple[list[torch.nn.Parameter], float]]:
        chosen = {n: p for n, p in named.items() if p.requires_grad and (id(p) in per_sample) == in_per_sample}
        return [([p for n, p in chosen.items() if not model.is_private(n)], local.learning_rate),
                ([p for n, p in chosen.items() if model.is_private(n)], private_rate)]

    def make(parameters: list[torch.nn.Parameter], rate: float) -> torch.optim.Optimizer:
        return make_optimizer(parameters, local.optimizer, rate, local.weight_decay)

    optimizer = grouped_optimizer(groups(True), make)
    if optimizer is None:
        raise ValueError(f"model {model.name!r} has no per-sample parameters to train")
    auxiliary = grouped_optimizer(groups(False), make)
    optimizers = [optimizer] if auxiliary is None else [optimizer, auxiliary]
    private_parameters = [p for n, p in named.items() if model.is_private(n)]
    if state is not None and state.optimizer_state:
        _parameter_state_from_arrays(state.optimizer_state, private_parameters, optimizers)
    return optimizer, optimizers[1:], private_parameters


def _parameter_state_to_arrays(parameters: list[torch.nn.Parameter],
                               optimizers: list[torch.optim.Optimizer]) -> Arrays:
    """Optimiser state of ``parameters``, keyed ``"{index in parameters}/{key}"`` whichever optimiser holds it."""
    arrays: Arrays = {}
    for index, parameter in enumerate(parameters):
        for optimizer in optimizers:
            for key, value in optimizer.state.get(parameter, {}).items():
                arrays[f"{index}/{key}"] = np.asarray(value.detach().cpu().numpy() if torch.is_tensor(value) else value)
    return arrays


def _parameter_state_from_arrays(arrays: Arrays, parameters: list[torch.nn.Parameter],
                                 optimizers: list[torch.optim.Optimizer]) -> None:
    for index, values in optimizer_state_from_arrays(arrays).items():
        if index >= len(parameters):
            continue
        parameter = parameters[index]
        for optimizer in optimizers:
            if any(parameter is p for group in optimizer.param_groups for p in group["params"]):
                optimizer.state[parameter] = values
