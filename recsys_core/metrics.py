"""What an evaluation reports, without the ranking itself: metric names, the config, and metric sums.

Plain numpy, no torch: the federated wire formats carry :class:`MetricSums`, and a device
answering a secure-aggregation query imports them without loading torch (a deployed
ClientApp starts a process per message, docs/benchmarks.md "Deployment round time").
:mod:`recsys_core.evaluation` ranks and fills them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys_core.errors import ConfigError

RANK_METRICS = ("hr", "ndcg", "recall", "mrr")


@dataclass(frozen=True)
class EvaluationConfig:
    """Cut-offs, the sampled protocol's negative count, and the seed of its negatives."""

    cutoffs: tuple[int, ...] = (10, 20)
    sampled_negatives: int = 99
    seed: int = 0
    batch_size: int = 256
    #: Full ranking leaves out the items each user had before (the standard protocol).
    #: False ranks every item, as some papers do; only for comparison with them.
    exclude_history: bool = True

    def validate(self) -> EvaluationConfig:
        if not self.cutoffs or any(k <= 0 for k in self.cutoffs):
            raise ConfigError(f"evaluation.cutoffs: need positive integers, got {self.cutoffs}")
        if self.sampled_negatives <= 0:
            raise ConfigError("evaluation.sampled_negatives: must be positive")
        if self.batch_size <= 0:
            raise ConfigError("evaluation.batch_size: must be positive")
        return self


def metric_names(config: EvaluationConfig) -> list[str]:
    """The keys of :attr:`MetricSums.sums` that :func:`evaluate_ranking` fills, sorted."""
    return sorted(f"{protocol}/{metric}@{cutoff}" for protocol in ("full", "sampled")
                  for metric in RANK_METRICS for cutoff in config.cutoffs)


@dataclass
class MetricSums:
    """Per-user metric values summed over users, plus the items each top-K list reached.

    ``sums`` keys look like ``"full/ndcg@10"``; ``recommended_counts[k]`` counts how
    often each item appeared in a full-ranking top-``k`` list (for catalogue coverage).
    """

    sums: dict[str, float] = field(default_factory=dict)
    num_users: int = 0
    recommended_counts: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, other: MetricSums) -> MetricSums:
        """Adds ``other`` into this object and returns it (for ``functools.reduce``)."""
        for key, value in other.sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.num_users += other.num_users
        for cutoff, counts in other.recommended_counts.items():
            if cutoff in self.recommended_counts:
                self.recommended_counts[cutoff] = self.recommended_counts[cutoff] + counts
            else:
                self.recommended_counts[cutoff] = counts.copy()
        return self

    def means(self) -> dict[str, float]:
        """Mean of every metric over evaluated users, plus ``full/coverage@k``; empty when no user was evaluated."""
        if self.num_users == 0:
            return {}
        result = {key: value / self.num_users for key, value in sorted(self.sums.items())}
        for cutoff, counts in sorted(self.recommended_counts.items()):
            result[f"full/coverage@{cutoff}"] = float(np.count_nonzero(counts)) / max(len(counts), 1)
        return result
