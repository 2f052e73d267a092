"""What a device puts in its masked vector, and what the server reads from the unmasked sum.

Training: the weighted shared-parameter update, the weight, the weighted loss and how
many coordinates the device had to clip. Evaluation: the metric sums and the user
count. Nothing about the update travels outside the vector.

FedAvg weights a device by its example count n. A device sends ``w = n / scale`` (in
[0, 1]; ``scale`` is the most training rows of any partition, which the server knows)
and ``w * update``; the server divides the two sums, which is the example-weighted mean.
Under user-level DP the update is already clipped and noised and every device counts
once, as in DP-FedAvg, so no weight is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_core.federated.aggregation import RoundSum
from recsys_core.federated.config import FederatedConfig
from recsys_core.metrics import EvaluationConfig, MetricSums, metric_names
from recsys_core.privacy.user_level import distributed_noise_std
from recsys_core.secure_aggregation.layout import Segment, VectorLayout

Arrays = dict[str, np.ndarray]

UPDATE_PREFIX = "update/"
WEIGHT = "weight"
WEIGHTED_LOSS = "weighted-loss"
CLIPPED = "clipped-coordinates"
METRIC_PREFIX = "metric/"
USERS = "num-users"
#: Distributed DP noise shares are clipped this many standard deviations out: a share is clipped
#: with probability below 1e-20 per coordinate, so the noise the accountant assumes is the noise added.
NOISE_TAIL_STDS = 10.0


def update_clip_range(config: FederatedConfig) -> float:
    """Per-coordinate range of a device's update: configured, or under user-level DP C plus the noise tail."""
    user_level = config.privacy.user_level
    if not user_level.enabled:
        return config.secure_aggregation.update_clip_range
    share_std = distributed_noise_std(user_level.noise_multiplier, user_level.clip_norm,
                                      user_level.min_surviving_devices)
    return user_level.clip_norm + NOISE_TAIL_STDS * share_std


def training_layout(config: FederatedConfig, shared: Arrays) -> VectorLayout:
    """The segments of a training contribution, in the order of the global arrays."""
    update_range = update_clip_range(config)
    segments = [Segment(UPDATE_PREFIX + name, int(np.size(value)), update_range) for name, value in shared.items()]
    if not config.privacy.user_level.enabled:
        segments += [Segment(WEIGHT, 1, 1.0), Segment(WEIGHTED_LOSS, 1, config.secure_aggregation.loss_clip_range)]
    total = sum(int(np.size(value)) for value in shared.values())
    segments.append(Segment(CLIPPED, 1, float(max(total, 1))))
    return VectorLayout(tuple(segments))


def training_values(layout: VectorLayout, received: Arrays, payload: Arrays, num_examples: int, train_loss: float,
                    weight_scale: float, user_level: bool) -> dict[str, np.ndarray]:
    """A device's training contribution as floats, segment by segment.

    ``payload`` is what the plain protocol would send: the trained shared parameters, or
    under user-level DP the clipped, noised update.
    """
    weight = 1.0 if user_level else min(num_examples / weight_scale, 1.0)
    values: dict[str, np.ndarray] = {}
    clipped = 0
    for segment in layout.segments:
        if not segment.name.startswith(UPDATE_PREFIX):
            continue
        name = segment.name.removeprefix(UPDATE_PREFIX)
        update = np.asarray(payload[name], dtype=np.float64)
        if not user_level:
            update = update - np.asarray(received[name], dtype=np.float64)
        update = (weight * update).reshape(-1)
        clipped += int(np.count_nonzero(np.abs(update) > segment.clip_range))
        values[segment.name] = update
    if not user_level:
        values[WEIGHT] = np.array([weight])
        loss = float(train_loss) if np.isfinite(train_loss) else 0.0  # under local DP no loss is reported
        values[WEIGHTED_LOSS] = np.array([weight * min(max(loss, 0.0), layout_range(layout, WEIGHTED_LOSS))])
    values[CLIPPED] = np.array([float(clipped)])
    return values


def layout_range(layout: VectorLayout, name: str) -> float:
    return next(segment.clip_range for segment in layout.segments if segment.name == name)


@dataclass(frozen=True)
class TrainingSum:
    """The unmasked sum over a round's surviving devices."""

    update_sum: Arrays
    weight_sum: float
    weighted_loss_sum: float
    clipped_coordinates: int

    def round_sum(self, shapes: Arrays, contributors: int, reports_loss: bool) -> RoundSum:
        """The sum as the aggregation core takes it, shaped like the global arrays.

        Under user-level DP no weight travels: every device counts once. ``reports_loss``
        is False where devices put no loss in the vector (under DP).
        """
        updates = {name: self.update_sum[name].reshape(np.shape(value)) for name, value in shapes.items()}
        weight = float(contributors) if np.isnan(self.weight_sum) else self.weight_sum
        return RoundSum(updates, weight, contributors, self.weighted_loss_sum if reports_loss else 0.0,
                        weight if reports_loss else 0.0, clipped_coordinates=self.clipped_coordinates)


def training_sum(layout: VectorLayout, total: np.ndarray) -> TrainingSum:
    parts = layout.unpack(total)
    updates = {name.removeprefix(UPDATE_PREFIX): value for name, value in parts.items()
               if name.startswith(UPDATE_PREFIX)}
    weight = float(parts[WEIGHT][0]) if WEIGHT in parts else float("nan")
    loss = float(parts[WEIGHTED_LOSS][0]) if WEIGHTED_LOSS in parts else float("nan")
    return TrainingSum(updates, weight, loss, round(float(parts[CLIPPED][0])))


def evaluation_layout(config: EvaluationConfig, max_users_per_device: int) -> VectorLayout:
    """Metric sums and the user count; each lies in [0, users on the device]."""
    scale = float(max(max_users_per_device, 1))
    return VectorLayout(tuple([Segment(METRIC_PREFIX + name, 1, scale) for name in metric_names(config)]
                              + [Segment(USERS, 1, scale)]))


def evaluation_values(layout: VectorLayout, sums: MetricSums) -> dict[str, np.ndarray]:
    values = {segment.name: np.array([sums.sums.get(segment.name.removeprefix(METRIC_PREFIX), 0.0)])
              for segment in layout.segments if segment.name.startswith(METRIC_PREFIX)}
    values[USERS] = np.array([float(sums.num_users)])
    return values


def evaluation_sums(layout: VectorLayout, total: np.ndarray) -> MetricSums:
    parts = layout.unpack(total)
    # Metric sums are never negative; rounding can leave a sum of zeros a few 1e-9 below zero.
    sums = {name.removeprefix(METRIC_PREFIX): max(float(value[0]), 0.0) for name, value in parts.items()
            if name.startswith(METRIC_PREFIX)}
    return MetricSums(sums, round(float(parts[USERS][0])))
