"""The message format both sides agree on: record names, config keys and metric packing."""

from __future__ import annotations

import numpy as np

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

#: A device under local DP sends its accountant's state (JSON, ``PrivacyAccountant.to_dict``) for the ledger.
PRIVACY_ACCOUNTANT_KEY = "privacy-accountant"


def update_problem(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> str | None:
    """Why a device's arrays cannot be aggregated with ``reference`` (the global model), or None.

    The server runs this on every reply before aggregating: a device that sends other
    arrays, other shapes or non-finite values is rejected alone and the round goes on.
    """
    missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
    if missing or extra:
        return f"arrays do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, expected in reference.items():
        value = arrays[name]
        if value.shape != expected.shape:
            return f"array {name!r} has shape {tuple(value.shape)}, expected {tuple(expected.shape)}"
        if not np.issubdtype(value.dtype, np.floating) and np.issubdtype(expected.dtype, np.floating):
            return f"array {name!r} has dtype {value.dtype}, expected floating point"
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            return f"array {name!r} holds NaN or infinite values"
    return None

#: Secure aggregation: the protocol's arrays (``recsys_core.secure_aggregation.wire``) and its settings.
SECURE_ARRAYS_RECORD = "secure-aggregation"
SECURE_CONFIG_RECORD = "secure-aggregation-config"
#: A device's long-term X25519 public key (bytes), registered when the server discovers it.
PUBLIC_KEY_KEY = "public-key"
#: The message type of the unmasking step (``ClientApp.query("unmask")``).
UNMASK_MESSAGE_TYPE = "query.unmask"
