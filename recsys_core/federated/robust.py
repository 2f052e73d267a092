"""Plain updates the server sees one by one: outlying norms rejected, and a robust combination when asked.

A device can send anything. The wire checks (:mod:`recsys_core.federated.wire`) reject what is
malformed: unknown keys, wrong shapes, non-finite values, an example count outside (0, the
federation's public bound]. What is well formed but harmful is bounded here. An update far
longer than the round's others is rejected (``server.update_norm_ratio``, ``server.max_update_norm``),
and ``server.aggregation = "median"`` or ``"trimmed_mean"`` bounds what a few that pass can do.
Under user-level DP none of this applies: the sum is over clipped updates, whose bound is the
sensitivity the guarantee rests on, and under secure aggregation the server sees no single update.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsys_core.federated.config import AggregationName, FederatedConfig, ServerConfig
from recsys_core.federated.records import DeviceFailure
from recsys_core.federated.state import Arrays

#: One device's plain reply as the server keeps it: ``(partition, trained shared arrays, examples, loss)``.
PlainUpdate = tuple[int, Arrays, int, float]


def update_norm(current: Arrays, arrays: Arrays) -> float:
    """The L2 norm of ``arrays - current`` over every array, in float64."""
    return float(np.sqrt(sum(np.sum((np.asarray(arrays[name], dtype=np.float64)
                                     - np.asarray(value, dtype=np.float64)) ** 2) for name, value in current.items())))


def outlying_norms(server: ServerConfig, norms: Sequence[float]) -> dict[int, str]:
    """Index → why, for the update norms beyond the configured bounds."""
    rejected: dict[int, str] = {}
    if server.max_update_norm > 0:
        rejected.update({index: f"update norm {norm:.4g} is above server.max_update_norm = {server.max_update_norm:g}"
                         for index, norm in enumerate(norms) if norm > server.max_update_norm})
    if server.update_norm_ratio > 0 and len(norms) > 0:
        # The lower median: with two updates the smaller one, so one hostile device cannot set the scale.
        median = float(np.sort(np.asarray(norms))[(len(norms) - 1) // 2])
        if median > 0:
            limit = server.update_norm_ratio * median
            rejected.update({index: f"update norm {norm:.4g} is {norm / median:.3g} times the round's median "
                                    f"{median:.4g} (server.update_norm_ratio = {server.update_norm_ratio:g})"
                             for index, norm in enumerate(norms) if norm > limit and index not in rejected})
    return rejected


def screen_updates(config: FederatedConfig, current: Arrays,
                   updates: Sequence[PlainUpdate]) -> tuple[list[PlainUpdate], list[DeviceFailure]]:
    """The updates within the norm bounds, and a failure naming each one set aside and why.

    Plain (non-DP) rounds only; under user-level DP every update is returned as it came.
    """
    server = config.server
    if config.privacy.user_level.enabled or (server.update_norm_ratio == 0 and server.max_update_norm == 0):
        return list(updates), []  # nothing to screen: no norm is worth computing
    norms = [update_norm(current, arrays) for _, arrays, _, _ in updates]
    rejected = outlying_norms(server, norms)
    kept = [update for index, update in enumerate(updates) if index not in rejected]
    failures = [DeviceFailure(updates[index][0], f"update rejected: {reason}") for index, reason in
                sorted(rejected.items())]
    return kept, failures


def robust_mean_update(current: Arrays, updates: Sequence[Arrays], method: AggregationName,
                       trim_fraction: float) -> Arrays:
    """The coordinate-wise median or trimmed mean of ``updates - current`` (unweighted, as FedMedian), float64."""
    combined: Arrays = {}
    count = len(updates)
    cut = int(trim_fraction * count)
    for name, value in current.items():
        stacked = np.stack([np.asarray(arrays[name], dtype=np.float64) for arrays in updates])
        stacked -= np.asarray(value, dtype=np.float64)
        if method == "median":
            combined[name] = np.median(stacked, axis=0)
        else:
            combined[name] = np.mean(np.sort(stacked, axis=0)[cut:count - cut], axis=0)
    return combined
