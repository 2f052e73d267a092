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
unless ``simulation.batched_one_step = "on"`` asked for this path, which is then refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys_core.federated.aggregation import RoundSum
from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.data import FederatedData
from recsys_core.federated.device import inject_faults
from recsys_core.federated.device_model import device_seed, fresh_device_model, load_device_model
from recsys_core.federated.state import Arrays
from recsys_core.models.base import Batch
from recsys_core.training import seeded

#: Stands in for the partition in the seed of the cohort's in-forward randomness.
COHORT_TAG = 2**31 - 2


@dataclass
class BatchedRound:
    """What a batched round gave: the devices' sum and each device's own figures."""

    round_sum: RoundSum
    #: Partitions in the sum, and each one's example count and mean training loss.
    partitions: list[int]
    num_examples: list[int]
    train_losses: list[float]
    #: Devices that take more than one step (more samples than ``local.batch_size``): run them one by one.
    multi_step: list[int]
    #: Devices whose fault injection fired, with the error.
    failed: dict[int, Exception]


def train_one_step_cohort(config: FederatedConfig, data: FederatedData, shared: Arrays, partitions: Sequence[int],
                          server_round: int) -> BatchedRound:
    """One batched forward and backward over the devices' samples; the FedAvg sum of their one-step updates."""
    if blockers := config.one_step_blockers():
        raise ValueError(f"a batched round would not be the devices' own steps: {'; '.join(blockers)}")
    local = config.local
    model = fresh_device_model(config, data.catalog, 1, 0)
    load_device_model(model, shared, None)
    model.train()
    samples: list[Batch] = []
    counts: list[int] = []
    sample_counts: list[int] = []
    kept: list[int] = []
    multi_step: list[int] = []
    failed: dict[int, Exception] = {}
    for partition in partitions:
        try:
            inject_faults(config, server_round, partition)
        except Exception as error:  # recorded as the device's failure, as on the per-device path
            failed[partition] = error
            continue
        split = data.device_split(partition)
        batch = model.training_samples(split.train, np.random.default_rng(device_seed(config.seed, server_round,
                                                                                        partition)))
        size = len(next(iter(batch.values()))) if batch else 0
        if size > local.batch_size:
            multi_step.append(partition)
            continue
        samples.append(batch)
        counts.append(model.example_count(split.train))
        sample_counts.append(size)
        kept.append(partition)
    before = {name: value.detach().clone() for name, value in model.shared_state().items()}
    zeros = {name: np.zeros(np.shape(value), dtype=np.float64) for name, value in shared.items()}
    if not kept:
        return BatchedRound(RoundSum(zeros, 0.0, 0), [], [], [], multi_step, failed)
    batch = {name: torch.cat([each[name] for each in samples]) for name in samples[0]}
    owner = torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(sample_counts))
    weights = (torch.tensor(counts, dtype=torch.float64) / torch.tensor(sample_counts, dtype=torch.float64))
    with seeded(device_seed(config.seed, server_round, COHORT_TAG)):
        per_sample = model.per_sample_loss(batch)
    (per_sample * weights[owner].to(per_sample.dtype)).sum().backward()
    losses = torch.zeros(len(kept), dtype=torch.float64).index_add_(0, owner, per_sample.detach().double())
    train_losses = (losses / torch.tensor(sample_counts, dtype=torch.float64)).tolist()
    parameters = dict(model.named_parameters())
    after = model.shared_state()
    total_weight = float(sum(counts))
    update_sum: Arrays = {}
    for name in shared:
        parameter = parameters.get(name)
        if parameter is not None:
            gradient = parameter.grad
            update_sum[name] = (np.zeros(np.shape(shared[name]), dtype=np.float64) if gradient is None
                                else -local.learning_rate * gradient.detach().double().numpy())
        else:
            # A buffer a forward pass moves (a step counter) moves once on every device.
            update_sum[name] = total_weight * (after[name].double() - before[name].double()).numpy()
    loss_sum = float(sum(n * loss for n, loss in zip(counts, train_losses)))
    return BatchedRound(RoundSum(update_sum, total_weight, len(kept), loss_sum, total_weight), kept, counts,
                        train_losses, multi_step, failed)
