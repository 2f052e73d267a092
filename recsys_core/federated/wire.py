"""The message format both sides agree on: record names, config keys and metric packing."""

from __future__ import annotations

from recsys_core.evaluation import MetricSums

PARAMETERS_RECORD = "arrays"
CONFIG_RECORD = "config"
METRICS_RECORD = "metrics"

CONFIG_KEY = "fedrec-config"
ROUND_KEY = "server-round"
EVALUATION_PART_KEY = "evaluation-part"
DEVICE_STATE_DIR_KEY = "device-state-dir"

SUM_PREFIX = "sum:"
USERS_KEY = "num-users"


def evaluation_metrics(sums: MetricSums, partition_id: int) -> dict[str, float | int]:
    """A device's evaluation reply: metric *sums* over its users, which the server adds up."""
    metrics: dict[str, float | int] = {SUM_PREFIX + name: value for name, value in sums.sums.items()}
    metrics[USERS_KEY] = sums.num_users
    metrics["partition-id"] = partition_id
    return metrics


def metric_sums_from_replies(replies: list[dict[str, float | int]]) -> MetricSums:
    """Adds the devices' metric sums; the means equal one central pass over the same users."""
    total = MetricSums()
    for reply in replies:
        total.add(MetricSums(
            {name.removeprefix(SUM_PREFIX): float(value) for name, value in reply.items()
             if name.startswith(SUM_PREFIX)},
            int(reply[USERS_KEY]),
        ))
    return total
