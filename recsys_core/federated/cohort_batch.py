"""A round of one-step devices as one batched gradient: the cohort engine's fast path.

Under the one-step recipe (one local epoch of plain SGD in a single batch, the
recipe of the SASRec, Mult-VAE and Mult-DAE configs), device ``d`` sends
``theta - lr * g_d``, where ``g_d`` is the gradient of its mean per-sample loss on its own
samples. FedAvg needs only ``sum_d n_d * (theta_d - theta) = -lr * sum_d n_d * g_d``,
which is the gradient of one loss over every device's samples with sample ``i`` of
device ``d`` weighted ``n_d / s_d`` (``n_d`` its example count, ``s_d`` its sample count).
So the round costs one forward and backward pass over the cohort's samples instead of one
model build, load, step and copy per device.

Each device's samples still come from its own rows and its own seeded generator
(:func:`~recsys_core.federated.device_model.device_seed`), and each device's loss and
count are its own. One thing differs from the per-device path: randomness *inside* the
forward pass (dropout, a VAE's sampling) is drawn for the whole cohort from a generator
seeded by ``(run seed, round)``, not from each device's seed. The update follows the same
distribution; it is not the same draw. A model without such randomness gets the
per-device path's model to float rounding (``tests/recsys_core/federated/test_cohort_batch.py``).

What the path cannot run exactly it names (:meth:`FederatedConfig.one_step_blockers`);
the cohort engine then runs the devices one by one, which changes nothing in the maths,
unless ``simulation.batching = "on"`` asked for this path, which is then refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from recsys_core.data.sampling import SeenItems
from recsys_core.federated.aggregation import RoundSum
from recsys_core.federated.cohort_state import CohortStates
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData
from recsys_core.federated.device import inject_faults
from recsys_core.federated.device_model import (
    device_seed,
    fresh_device_model,
    initial_private_parameters,
    load_device_model,
)
from recsys_core.federated.state import Arrays, DeviceState, state_to_arrays
from recsys_core.metrics import MetricSums
from recsys_core.models import CatalogInfo, Recommender, model_class
from recsys_core.models.base import Batch
from recsys_core.training import evaluate_model, seeded

#: Stands in for the partition in the seed of the cohort's in-forward randomness.
COHORT_TAG = 2**31 - 2
#: Bytes of input samples in one forward pass; a larger cohort is split into chunks of devices whose gradients add
#: up. It bounds the activations. Counted in samples, a SASRec sample (a whole sequence) weighed as much as a
#: NeuMF pair, and all 35,598 Amazon Sports devices' sequences went through one pass at a 15 GiB peak; counted in
#: input numbers, Mult-VAE's one-byte multi-hot histories made chunks of 29 devices (1,200 passes a round).
CHUNK_BYTES = 1 << 22


@dataclass
class BatchedRound:
    """What a batched round gave: the devices' sum and each device's own figures and new state."""

    round_sum: RoundSum
    #: Partitions in the sum, and each one's example count and mean training loss.
    partitions: list[int]
    num_examples: list[int]
    train_losses: list[float]
    #: Devices the batch cannot hold (more samples than ``local.batch_size``, or none): run them one by one.
    one_by_one: list[int]
    #: Devices whose fault injection fired, with the error.
    failed: dict[int, Exception]
    #: Each batched device's new private state; the caller keeps them once it accepts the round.
    device_states: dict[int, DeviceState] = field(default_factory=dict)


@dataclass
class _Device:
    partition: int
    samples: Batch
    num_samples: int
    #: The bytes of its samples (every input tensor): what its share of a pass costs.
    num_bytes: int
    num_examples: int
    #: The device's private parameters before the step (its stored state, or its seeded initial draw).
    private: Arrays
    num_users: int


def train_one_step_cohort(config: FederatedConfig, data: FederatedData, shared: Arrays, partitions: Sequence[int],
                          server_round: int, states: CohortStates | None = None) -> BatchedRound:
    """One batched forward and backward over the devices' samples; the FedAvg sum of their one-step updates.

    Private parameters (a user embedding) are stacked: device ``d``'s rows sit after those of the
    devices before it, and its batch's user ids are offset to match, so each device's rows get the
    gradient of its own loss only.
    """
    if blockers := config.one_step_blockers():
        raise ValueError(f"a batched round would not be the devices' own steps: {'; '.join(blockers)}")
    devices, one_by_one, failed = _prepare(config, data, partitions, server_round, states or CohortStates())
    zeros = {name: np.zeros(np.shape(value), dtype=np.float64) for name, value in shared.items()}
    if not devices:
        return BatchedRound(RoundSum(zeros, 0.0, 0), [], [], [], one_by_one, failed)
    model = fresh_device_model(config, data.catalog, sum(device.num_users for device in devices), 0)
    load_device_model(model, shared, _stacked_private(devices))
    model.train()
    counts = torch.tensor([device.num_examples for device in devices], dtype=torch.float64)
    sizes = torch.tensor([device.num_samples for device in devices], dtype=torch.float64)
    before = {name: value.detach().clone() for name, value in model.shared_state().items()}
    losses = torch.zeros(len(devices), dtype=torch.float64)
    first_row = 0
    # Chunks of devices bound the activations' memory; their gradients add up in .grad.
    for chunk, (start, end) in enumerate(_chunks([device.num_bytes for device in devices])):
        per_sample, owner = _forward(config, model, devices[start:end], first_row, server_round, chunk)
        owner += start
        (per_sample * (counts / sizes)[owner].to(per_sample.dtype)).sum().backward()
        losses.index_add_(0, owner, per_sample.detach().double())
        first_row += sum(device.num_users for device in devices[start:end])
    train_losses = (losses / sizes).tolist()
    total_weight = float(counts.sum())
    update_sum = _shared_update_sum(config, model, shared, before, total_weight)
    loss_sum = float(sum(n * loss for n, loss in zip(counts.tolist(), train_losses)))
    return BatchedRound(RoundSum(update_sum, total_weight, len(devices), loss_sum, total_weight),
                        [device.partition for device in devices], [device.num_examples for device in devices],
                        train_losses, one_by_one, failed, _private_steps(config, model, devices))


def _prepare(config: FederatedConfig, data: FederatedData, partitions: Sequence[int], server_round: int,
             states: CohortStates) -> tuple[list[_Device], list[int], dict[int, Exception]]:
    """Each device's own samples (its rows, its seeded generator) and private rows, or why it is not batched."""
    template = fresh_device_model(config, data.catalog, 1, 0)
    devices: list[_Device] = []
    one_by_one: list[int] = []
    failed: dict[int, Exception] = {}
    for partition in partitions:
        try:
            inject_faults(config, server_round, partition)
        except Exception as error:  # recorded as the device's failure, as on the per-device path
            failed[partition] = error
            continue
        split = data.device_split(partition)
        generator = np.random.default_rng(device_seed(config.seed, server_round, partition))
        samples = template.training_samples(split.train, generator)
        size = len(next(iter(samples.values()))) if samples else 0
        if not 0 < size <= config.local.batch_size:
            one_by_one.append(partition)
            continue
        private: Arrays = {}
        if template.private_modules:
            state = states.get(partition)
            private = dict(state.private_parameters) if state is not None else state_to_arrays(
                initial_private_parameters(config, template, split.train.n_users, partition))
        devices.append(_Device(partition, samples, size, sum(value.nbytes for value in samples.values()),
                               template.example_count(split.train), private, split.train.n_users))
    return devices, one_by_one, failed


def _stacked_private(devices: list[_Device]) -> DeviceState | None:
    if not devices[0].private:
        return None
    names = devices[0].private
    return DeviceState({name: np.concatenate([device.private[name] for device in devices]) for name in names}, {})


def _chunks(sample_bytes: list[int]) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` runs of devices holding at most :data:`CHUNK_BYTES` of samples (or one device)."""
    chunks, start, held = [], 0, 0
    for index, count in enumerate(sample_bytes):
        if index > start and held + count > CHUNK_BYTES:
            chunks.append((start, index))
            start, held = index, 0
        held += count
    chunks.append((start, len(sample_bytes)))
    return chunks


def _forward(config: FederatedConfig, model: Recommender, devices: list[_Device], first_row: int,
             server_round: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The devices' per-sample losses in one pass, and which of them each sample belongs to.

    ``first_row``: where the first device's private rows sit in the stacked private parameters.
    """
    offsets = first_row + np.cumsum([0] + [device.num_users for device in devices[:-1]])
    batch = {}
    for name in devices[0].samples:
        parts = [device.samples[name] for device in devices]
        if name in model.user_id_keys:
            parts = [part + int(offset) for part, offset in zip(parts, offsets)]
        batch[name] = torch.cat(parts)
    owner = torch.repeat_interleave(torch.arange(len(devices)), torch.tensor([d.num_samples for d in devices]))
    with seeded(int(np.random.SeedSequence([config.seed, server_round, COHORT_TAG, chunk]).generate_state(1)[0])):
        return model.per_sample_loss(batch), owner


def _shared_update_sum(config: FederatedConfig, model: Recommender, shared: Arrays,
                       before: dict[str, torch.Tensor], total_weight: float) -> Arrays:
    """``sum_d n_d * (theta_d - theta)`` of every shared array."""
    parameters = dict(model.named_parameters())
    after = model.shared_state()
    update_sum: Arrays = {}
    for name in shared:
        parameter = parameters.get(name)
        if parameter is not None:
            gradient = parameter.grad
            update_sum[name] = (np.zeros(np.shape(shared[name]), dtype=np.float64) if gradient is None
                                else -config.local.learning_rate * gradient.detach().double().numpy())
        else:
            # A buffer a forward pass moves (a step counter) moves once on every device.
            update_sum[name] = total_weight * (after[name].double() - before[name].double()).numpy()
    return update_sum


def _private_steps(config: FederatedConfig, model: Recommender, devices: list[_Device]) -> dict[int, DeviceState]:
    """Each device's SGD step on its own private rows: the batch gave it ``n_d`` times its mean loss's gradient."""
    if not devices[0].private:
        return {}
    rate = config.local.private_learning_rate or config.local.learning_rate
    parameters = dict(model.named_parameters())
    states: dict[int, DeviceState] = {}
    start = 0
    for device in devices:
        rows = slice(start, start + device.num_users)
        start += device.num_users
        private = {}
        for name, value in device.private.items():
            gradient = parameters[name].grad
            step = (torch.zeros_like(parameters[name][rows]) if gradient is None
                    else gradient[rows] / device.num_examples)
            private[name] = (torch.from_numpy(value) - rate * step).detach().numpy()
        states[device.partition] = DeviceState(private, {})
    return states


#: Devices scored together in one batched evaluation chunk (bounds the [users, items] score matrix).
EVALUATION_CHUNK = 1024


def evaluation_blockers(config: FederatedConfig) -> list[str]:
    """Why devices cannot be evaluated together (a device's ranking depends on its private state); empty if
    they can. Their metric sums then add up to what each device would report (the sampled protocol's
    negatives are seeded by each user's original id, so every user draws the same negatives either way)."""
    model = model_class(config.model.name)
    blockers = []
    if model.private_modules:
        blockers.append(f"model {config.model.name!r} ranks with each device's private parameters")
    if not model.trains_with_gradients:
        blockers.append(f"model {config.model.name!r} is fitted on each device's own counts")
    return blockers


def evaluate_cohort_batched(config: FederatedConfig, data: FederatedData, shared: Arrays, partitions: Sequence[int],
                            part: str, on_chunk: Callable[[int], None] | None = None) -> MetricSums:
    """The sum of the devices' evaluation metric sums, computed for many devices at a time.

    ``on_chunk`` is called with the number of devices done after each chunk.
    """
    if blockers := evaluation_blockers(config):
        raise ValueError(f"devices cannot be evaluated together: {'; '.join(blockers)}")
    total = MetricSums()
    model = None
    for start in range(0, len(partitions), EVALUATION_CHUNK):
        split = data.cohort_split(partitions[start:start + EVALUATION_CHUNK])
        if model is None:
            model = fresh_device_model(config, CatalogInfo.from_log(split.train), split.train.n_users, 0)
            load_device_model(model, shared, None)
        model.catalog = CatalogInfo.from_log(split.train)
        seen = SeenItems.from_logs(split.train, split.valid, split.test)
        total.add(evaluate_model(model, split, "valid" if part == "valid" else "test", seen, config.evaluation))
        if on_chunk is not None:
            on_chunk(min(start + EVALUATION_CHUNK, len(partitions)))
    return total
