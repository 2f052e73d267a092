"""What one device does in a round: train on its own rows, or evaluate on them.

A device holds its users' rows only, with those users renumbered from 0. It keeps
a :class:`DeviceState` between rounds (its private parameters, such as the user
embedding, and the optimiser state of those parameters); only the *shared*
parameters go back to the server. Every random draw is seeded by
``(run seed, round, partition)``, so a round can be replayed exactly.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from recsys_core.audit.canaries import CanaryPlan, insert_canaries
from recsys_core.config import dataclass_from_dict, dataclass_to_dict
from recsys_core.data.config import DataConfig
from recsys_core.data.loading import load_interactions
from recsys_core.data.partitions import ClientPartitioner, PartitionConfig, localize_users, rows_of_users
from recsys_core.data.sampling import SeenItems
from recsys_core.data.splits import DatasetSplit, split_log
from recsys_core.evaluation import MetricSums
from recsys_core.federated.config import FederatedConfig, require_gradient_model
from recsys_core.models import CatalogInfo, Recommender, build_model, model_class
from recsys_core.training import evaluate_model, make_optimizer, run_local_epochs, seeded

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class FederatedData:
    """The split of the whole dataset and its client partitions (built once per process)."""

    split: DatasetSplit
    partitioners: tuple[ClientPartitioner, ClientPartitioner, ClientPartitioner]
    #: The audit canaries planted in ``split.train`` (``data.canaries``), or None.
    canaries: CanaryPlan | None = None

    @property
    def num_clients(self) -> int:
        return self.partitioners[0].num_partitions

    @property
    def catalog(self) -> CatalogInfo:
        return CatalogInfo.from_log(self.split.train)

    def most_training_rows(self) -> int:
        """The most training rows any partition holds: a bound on any device's example count, by which
        secure aggregation scales example weights."""
        rows = np.bincount(self.partitioners[0].assignment, weights=np.diff(self.split.train.user_offsets),
                           minlength=self.num_clients)
        return int(rows.max()) if rows.size else 0

    def most_users(self) -> int:
        """The most users any partition holds (the range of a device's metric sums)."""
        users = np.bincount(self.partitioners[0].assignment, minlength=self.num_clients)
        return int(users.max()) if users.size else 0

    def device_split(self, partition_id: int) -> DatasetSplit:
        """The partition's train/valid/test rows, with its users renumbered from 0."""
        users = self.partitioners[0].users_of(partition_id)
        parts = [localize_users(rows_of_users(part, users), users)
                 for part in (self.split.train, self.split.valid, self.split.test)]
        return DatasetSplit(*parts)


def load_federated_data(data: DataConfig, partition: PartitionConfig) -> FederatedData:
    """Loads, preprocesses, splits and partitions the dataset (cached per process)."""
    return _load_federated_data(json.dumps(dataclass_to_dict(data), sort_keys=True), partition)


@lru_cache(maxsize=2)
def _load_federated_data(data_json: str, partition: PartitionConfig) -> FederatedData:
    # Simulated clients run in long-lived worker processes: load the dataset once per
    # worker, then every call slices its own partition in time proportional to its rows.
    data = dataclass_from_dict(DataConfig, json.loads(data_json))
    split, canaries = insert_canaries(split_log(load_interactions(data), data.split), data.canaries)
    partitioners = tuple(ClientPartitioner(part, partition) for part in (split.train, split.valid, split.test))
    return FederatedData(split, partitioners, canaries)  # type: ignore[arg-type]


#: Key of the privacy accountant's JSON state (UTF-8 bytes as uint8) in :meth:`DeviceState.to_arrays`.
ACCOUNTANT_KEY = "privacy/accountant"


@dataclass
class DeviceState:
    """What a device keeps between rounds: private parameters, their optimiser state and,
    under local DP, its privacy accountant (:meth:`PrivacyAccountant.to_dict`).

    The accountant must never be lost or reset: its history is what the device has spent.
    """

    private_parameters: Arrays
    optimizer_state: Arrays
    privacy_accountant: dict[str, Any] | None = None

    def to_arrays(self) -> Arrays:
        """Flat arrays for storage (Flower ``Context.state`` or a file)."""
        flat = {f"private/{name}": value for name, value in self.private_parameters.items()}
        flat.update({f"optimizer/{name}": value for name, value in self.optimizer_state.items()})
        if self.privacy_accountant is not None:
            # Array stores hold numbers only: the JSON travels as its bytes.
            text = json.dumps(self.privacy_accountant, sort_keys=True)
            flat[ACCOUNTANT_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        return flat

    @classmethod
    def from_arrays(cls, flat: Arrays) -> DeviceState:
        private = {k.removeprefix("private/"): v for k, v in flat.items() if k.startswith("private/")}
        optimizer = {k.removeprefix("optimizer/"): v for k, v in flat.items() if k.startswith("optimizer/")}
        accountant = None
        if ACCOUNTANT_KEY in flat:
            accountant = json.loads(np.asarray(flat[ACCOUNTANT_KEY], dtype=np.uint8).tobytes().decode("utf-8"))
        return cls(private, optimizer, accountant)


@dataclass
class TrainOutcome:
    """A device's reply to a training message.

    ``declined`` is True when the device did not train (local DP: the round would exceed
    its privacy budget); then ``num_examples`` is 0, the shared parameters are the ones
    received and ``decline_reason`` says why. ``privacy_epsilon`` is the device's local-DP
    epsilon spent so far (at ``privacy.local.target_delta``), None without local DP.
    """

    shared_parameters: Arrays
    device_state: DeviceState
    num_examples: int
    train_loss: float
    declined: bool = False
    decline_reason: str = ""
    privacy_epsilon: float | None = None
    #: Under user-level DP, what the device sends instead of its parameters: its update
    #: (trained minus received), clipped and, with distributed noise, noised.
    clipped_update: Arrays | None = None

    @property
    def payload(self) -> Arrays:
        """The arrays that leave the device."""
        return self.shared_parameters if self.clipped_update is None else self.clipped_update


def state_to_arrays(state: dict[str, torch.Tensor]) -> Arrays:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in state.items()}


def build_device_model(config: FederatedConfig, catalog: CatalogInfo, n_local_users: int,
                       partition_id: int) -> Recommender:
    """The model a device runs, sized for its own users; private parameters start from a seed."""
    local_catalog = replace(catalog, n_users=n_local_users)
    with seeded(_seed(config.seed, 0, partition_id)):
        return build_model(config.model.name, local_catalog, config.model.options)


def fresh_device_model(config: FederatedConfig, catalog: CatalogInfo, n_local_users: int,
                       partition_id: int) -> Recommender:
    """:func:`build_device_model` for a device about to load the global model over it.

    A model with no private parameters and no item features gets every weight from the
    server, so its own initial weights are never used: it is copied from a per-process
    template instead of drawn again. Drawing them was most of a Mult-DAE device update on
    Amazon Beauty (14.6M weights, about 0.13 s a device). The copy is the same model
    the build would give once the shared parameters are loaded.
    """
    if model_class(config.model.name).private_modules or catalog.item_features is not None:
        return build_device_model(config, catalog, n_local_users, partition_id)
    options = json.dumps(config.model.options, sort_keys=True)
    model = copy.deepcopy(_model_template(config.model.name, options, catalog.n_items, n_local_users))
    model.catalog = replace(catalog, n_users=n_local_users)
    return model


@lru_cache(maxsize=2)
def _model_template(name: str, options_json: str, n_items: int, n_users: int) -> Recommender:
    # Simulated devices run in long-lived worker processes, one model family per run.
    return build_model(name, CatalogInfo(n_users=n_users, n_items=n_items), json.loads(options_json))


#: Stands in for the round number in the seed of a refit, which happens outside any training round.
REFIT_ROUND_TAG = 2**31 - 1


def _seed(run_seed: int, server_round: int, partition_id: int) -> int:
    return int(np.random.SeedSequence([run_seed, server_round, partition_id]).generate_state(1)[0])


def load_device_model(model: Recommender, shared: Arrays, state: DeviceState | None) -> None:
    """Loads the global shared parameters and, when the device has them, its private ones."""
    tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in shared.items()}
    if state is not None:
        tensors.update({name: torch.from_numpy(np.asarray(value)) for name, value in state.private_parameters.items()})
    missing = set(model.shared_state()) - set(shared)
    if missing:
        raise ValueError(f"the server's model lacks shared parameters {sorted(missing)}")
    model.load_state_dict(tensors, strict=False)


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
                                          user_level.min_surviving_clients)
    # OS entropy: the server knows the run seed, and a noise share it can regenerate hides nothing.
    clipped = privatize_update(update, user_level.clip_norm, noise_std, np.random.default_rng())
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
        return _train_with_local_dp(config, split, model, shared, state, server_round, partition_id)
    local = config.local
    if not model.trains_with_gradients:
        model.fit_statistics(split.train)
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
            restored["state"] = _optimizer_state_from_arrays(state.optimizer_state)
            private_optimizer.load_state_dict(restored)
        optimizers.append(private_optimizer)
    regularizer = _proximal_term(shared_parameters, local.proximal_mu) if local.proximal_mu > 0 else None
    generator = np.random.default_rng(_seed(config.seed, server_round, partition_id))
    with seeded(_seed(config.seed, server_round, partition_id)):
        losses = run_local_epochs(model, split.train, optimizers, local.epochs, local.batch_size, generator,
                                  regularizer)
    new_state = DeviceState(
        state_to_arrays(model.private_state()),
        {} if private_optimizer is None else _optimizer_state_to_arrays(private_optimizer),
    )
    return TrainOutcome(state_to_arrays(model.shared_state()), new_state, model.example_count(split.train),
                        losses[-1])


def _train_with_local_dp(
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
    seed = _seed(config.seed, server_round, partition_id)
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
    secret = np.random.default_rng()  # OS entropy: unknown to the server
    noise_generator = torch.Generator().manual_seed(int(secret.integers(2**63 - 1)))
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
    for index, values in _optimizer_state_from_arrays(arrays).items():
        if index >= len(parameters):
            continue
        parameter = parameters[index]
        for optimizer in optimizers:
            if any(parameter is p for group in optimizer.param_groups for p in group["params"]):
                optimizer.state[parameter] = values


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
    seed = _seed(config.seed, REFIT_ROUND_TAG, partition_id)
    with seeded(seed):
        run_local_epochs(model, split.train, [optimizer], local.private_refit_epochs, local.batch_size,
                         np.random.default_rng(seed))


def _proximal_term(parameters: list[torch.nn.Parameter], mu: float) -> Callable[[], torch.Tensor]:
    anchors = [parameter.detach().clone() for parameter in parameters]

    def proximal() -> torch.Tensor:
        return 0.5 * mu * torch.stack([((p - a) ** 2).sum() for p, a in zip(parameters, anchors)]).sum()

    return proximal


def _optimizer_state_to_arrays(optimizer: torch.optim.Optimizer) -> Arrays:
    arrays: Arrays = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            arrays[f"{index}/{key}"] = np.asarray(value.detach().cpu().numpy() if torch.is_tensor(value) else value)
    return arrays


def _optimizer_state_from_arrays(arrays: Arrays) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in arrays.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = torch.from_numpy(np.array(value))
    return state
