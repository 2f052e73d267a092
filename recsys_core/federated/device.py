"""What one device does in a round: train on its own rows, or evaluate on them.

A device holds its users' rows only, with those users renumbered from 0. It keeps
a :class:`DeviceState` between rounds (its private parameters, such as the user
embedding, and the optimiser state of those parameters); only the *shared*
parameters go back to the server. Every random draw is seeded by
``(run seed, round, partition)``, so a round can be replayed exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from recsys_core.config import dataclass_from_dict, dataclass_to_dict
from recsys_core.data.partitions import ClientPartitioner, PartitionConfig, localize_users, rows_of_users
from recsys_core.data.sampling import SeenItems
from recsys_core.data.splits import DatasetSplit, split_log
from recsys_core.evaluation import MetricSums
from recsys_core.experiment import DataConfig, load_interactions
from recsys_core.federated.config import FederatedConfig
from recsys_core.models import CatalogInfo, Recommender, build_model
from recsys_core.training import evaluate_model, make_optimizer, run_local_epochs, seeded

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class FederatedData:
    """The split of the whole dataset and its client partitions (built once per process)."""

    split: DatasetSplit
    partitioners: tuple[ClientPartitioner, ClientPartitioner, ClientPartitioner]

    @property
    def num_clients(self) -> int:
        return self.partitioners[0].num_partitions

    @property
    def catalog(self) -> CatalogInfo:
        return CatalogInfo.from_log(self.split.train)

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
    split = split_log(load_interactions(data), data.split)
    partitioners = tuple(ClientPartitioner(part, partition) for part in (split.train, split.valid, split.test))
    return FederatedData(split, partitioners)  # type: ignore[arg-type]


@dataclass
class DeviceState:
    """What a device keeps between rounds: private parameters and their optimiser state."""

    private_parameters: Arrays
    optimizer_state: Arrays

    def to_arrays(self) -> Arrays:
        """Flat arrays for storage (Flower ``Context.state`` or a file)."""
        flat = {f"private/{name}": value for name, value in self.private_parameters.items()}
        flat.update({f"optimizer/{name}": value for name, value in self.optimizer_state.items()})
        return flat

    @classmethod
    def from_arrays(cls, flat: Arrays) -> DeviceState:
        private = {k.removeprefix("private/"): v for k, v in flat.items() if k.startswith("private/")}
        optimizer = {k.removeprefix("optimizer/"): v for k, v in flat.items() if k.startswith("optimizer/")}
        return cls(private, optimizer)


@dataclass
class TrainOutcome:
    shared_parameters: Arrays
    device_state: DeviceState
    num_examples: int
    train_loss: float


def state_to_arrays(state: dict[str, torch.Tensor]) -> Arrays:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in state.items()}


def build_device_model(config: FederatedConfig, catalog: CatalogInfo, n_local_users: int,
                       partition_id: int) -> Recommender:
    """The model a device runs, sized for its own users; private parameters start from a seed."""
    local_catalog = CatalogInfo(n_users=n_local_users, n_items=catalog.n_items, item_features=catalog.item_features)
    with seeded(_seed(config.seed, 0, partition_id)):
        return build_model(config.model.name, local_catalog, config.model.options)


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
    """One round of local training; returns the new shared parameters and the device's new state."""
    inject_faults(config, server_round, partition_id)
    model = build_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, partition_id)
    load_device_model(model, shared, state)
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
    return TrainOutcome(state_to_arrays(model.shared_state()), new_state, split.train.n_interactions, losses[-1])


def evaluate_on_device(
    config: FederatedConfig,
    split: DatasetSplit,
    shared: Arrays,
    state: DeviceState | None,
    part: str,
    partition_id: int,
) -> MetricSums:
    """Ranks the device's held-out items (``valid`` or ``test``) with the global model and its private state."""
    model = build_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, partition_id)
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
