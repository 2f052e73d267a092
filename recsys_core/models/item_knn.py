"""Item k-NN: items ranked by how often they appeared near the user's recent items.

Fitted by counting, like Popularity, so federated it is a sum: every device adds its
users' statistics and the server keeps the total. That makes it the model for
user-level DP at small scale (docs/privacy.md, "Private by default"):

- each user's statistics in a round are **scaled to L2 norm exactly 1**, so one user
  moves the sum by at most 1 whatever their history, and clipping at ``clip_norm = 1``
  never distorts it;
- a few rounds release everything, so the budget buys a few Gaussian mechanisms
  (six at sigma 1.43 spend epsilon 8 at delta 1e-4) instead of the dozens of rounds a
  gradient model composes;
- a sum needs no per-device weights or losses, so it goes through secure aggregation as is.

Round 1 releases the item counts (each of a user's ``n`` distinct items ``1/sqrt(n)``):
the popularity prior, and the choice of the ``neighbourhood_items`` most counted items
(DP-FEST's idea, Ghazi et al. 2023: put noise only on rows chosen privately; the
tail would be all noise). The next ``pair_releases`` rounds each release their
co-occurrence table again, with fresh noise: each pair of the user's chosen items at
most ``window`` places apart in time, and each item with itself, gets the same weight.
The neighbourhood is a function of the released counts, so every device and the scorer
agree on it, and the later rounds leave the counts exactly as they were. Releasing the
table K times and averaging spends the budget unevenly: the table's small entries get
noise sigma/sqrt(K), the counts' large ones sigma.

Scoring reads the user's history, most recent last: the last ``history_length``
distinct items, the m-th most recent weighted ``recency_decay ** m``, vote for the items
near them. The mean released table is first averaged with its transpose (both copies
of a pair carry independent noise, so this halves its variance for free). A vote is
normalised by the two items' own weights (the table's diagonal) as
``co[j, i] / (d_j^(1/2) * d_i^similarity_exponent)``: 0.5 is cosine similarity, smaller
exponents let popular items through. Items whose diagonal is below ``min_item_weight`` or
``noise_threshold`` standard deviations of the table's noise (estimated from its negative
entries, so the model adapts to any epsilon by itself) neither vote nor receive votes;
``pair_noise_threshold`` also shrinks every pair entry towards zero by that many
deviations. Every item also gets ``prior_weight * log(1 + count)``, which alone ranks
the items outside the neighbourhood.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender


@dataclass(frozen=True)
class ItemKNNConfig(ModelConfig):
    #: The co-occurrence table covers this many items, the most counted in the first release.
    neighbourhood_items: int = 300
    #: Pairs count only between items at most this many places apart in the user's (distinct,
    #: time-ordered) history; 0: every pair.
    window: int = 10
    #: Most recent distinct history items that vote.
    history_length: int = 50
    #: The m-th most recent voting item counts ``recency_decay ** m`` (1: all equally).
    recency_decay: float = 0.9
    #: 0.5: cosine similarity; lower favours popular items.
    similarity_exponent: float = 0.3
    #: Items whose own weight (the table's diagonal) is below this neither vote nor get votes...
    min_item_weight: float = 1.0
    #: ...nor below this many standard deviations of the table's noise (estimated from the table).
    noise_threshold: float = 3.0
    #: Pair entries are shrunk towards zero by this many standard deviations of the noise (soft
    #: thresholding). 0 keeps them; 2 suits epsilon 1 and below, where most pair entries are noise
    #: (docs/benchmarks.md), and costs accuracy at epsilon 3 and above.
    pair_noise_threshold: float = 0.0
    #: Weight of the log item counts added to every score (the popularity prior).
    prior_weight: float = 0.1
    #: Rounds that release the co-occurrence table, each with fresh noise; the scorer averages
    #: them. Under a fixed budget, K releases put noise of std sigma_K / sqrt(K) on the table and
    #: sigma_K on the counts, where sigma_K is the noise multiplier for K + 1 rounds: more of the
    #: budget goes to the table, whose entries are small, than to the counts, which are large.
    pair_releases: int = 5

    @property
    def statistics_rounds(self) -> int:
        return 1 + self.pair_releases

    def validate(self) -> None:
        super().validate()
        if self.neighbourhood_items < 1:
            raise ConfigError(f"model.neighbourhood_items: must be at least 1, got {self.neighbourhood_items}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ConfigError(f"model.recency_decay: must be in (0, 1], got {self.recency_decay}")
        if self.pair_releases < 1:
            raise ConfigError(f"model.pair_releases: must be at least 1, got {self.pair_releases}")
        if self.history_length < 1:
            raise ConfigError(f"model.history_length: must be at least 1, got {self.history_length}")
        for key in ("min_item_weight", "noise_threshold", "pair_noise_threshold"):
            if not (getattr(self, key) >= 0 and np.isfinite(getattr(self, key))):
                raise ConfigError(f"model.{key}: must be non-negative and finite, got {getattr(self, key)}")


class ItemKNN(Recommender):
    name = "item_knn"
    config_class = ItemKNNConfig
    trains_with_gradients = False
    item_counts: torch.Tensor
    cooccurrence: torch.Tensor

    def __init__(self, catalog: CatalogInfo, config: ItemKNNConfig) -> None:
        super().__init__(catalog, config)
        self.config: ItemKNNConfig = config
        self.register_buffer("item_counts", torch.zeros(catalog.n_items, dtype=torch.float32))
        size = min(config.neighbourhood_items, catalog.n_items)
        self.register_buffer("cooccurrence", torch.zeros(size, size, dtype=torch.float32))

    # -- fitting -----------------------------------------------------------------------------
    def fit_statistics(self, log: InteractionLog) -> None:
        """Every release from ``log`` at once: what a central fit, or a noiseless federation, ends with."""
        # Later rounds add to the table, so a refit starts it from zero.
        self.cooccurrence.zero_()
        for statistics_round in range(1, self.statistics_rounds + 1):
            self.fit_statistics_round(log, statistics_round)

    def fit_statistics_round(self, log: InteractionLog, statistics_round: int) -> None:
        """Round 1: the item counts. Later rounds: co-occurrences among the top items by the counts already held.

        Each later round adds the table again to what the earlier ones released, so a device's
        update in every such round is its own table (norm 1) and the federation sums them.
        """
        if statistics_round == 1:
            self.item_counts.copy_(torch.from_numpy(self._counts(log)))
        else:
            self.cooccurrence.add_(torch.from_numpy(self._pairs(log, self.neighbourhood())))

    @classmethod
    def released_arrays(cls, statistics_round: int) -> tuple[str, ...] | None:
        return ("item_counts",) if statistics_round == 1 else ("cooccurrence",)

    def neighbourhood(self) -> np.ndarray:
        """The items the table covers: the ``neighbourhood_items`` most counted, ties to the lower id.

        A function of the released counts alone, so every device and the scorer agree on it.
        """
        counts = self.item_counts.numpy().astype(np.float64)
        order = np.lexsort((np.arange(len(counts)), -counts))
        return order[: self.cooccurrence.shape[0]]

    def _counts(self, log: InteractionLog) -> np.ndarray:
        counts = np.zeros(self.catalog.n_items, dtype=np.float64)
        for start, end in zip(log.user_offsets[:-1], log.user_offsets[1:]):
            items = np.unique(log.item_ids[start:end])
            if len(items):
                # Each distinct item 1/sqrt(n): the user's count vector has norm exactly 1.
                counts[items] += 1.0 / np.sqrt(len(items))
        return counts.astype(np.float32)

    def _pairs(self, log: InteractionLog, neighbourhood: np.ndarray) -> np.ndarray:
        size = len(neighbourhood)
        position = np.full(self.catalog.n_items, -1, dtype=np.int64)
        position[neighbourhood] = np.arange(size)
        pairs = np.zeros((size, size), dtype=np.float64)
        window = self.config.window
        for start, end in zip(log.user_offsets[:-1], log.user_offsets[1:]):
            ordered = position[_recent_distinct(log.item_ids[start:end], end - start)[::-1]]
            items = ordered[ordered >= 0]
            if len(items) == 0:
                continue
            reach = len(items) - 1 if window == 0 else min(window, len(items) - 1)
            # Each entry (an item with itself, each ordered pair at most `reach` apart) gets the same
            # weight, so the user's table has norm exactly 1.
            entries = len(items) + 2 * sum(len(items) - gap for gap in range(1, reach + 1))
            weight = 1.0 / np.sqrt(entries)
            pairs[items, items] += weight
            for gap in range(1, reach + 1):
                pairs[items[:-gap], items[gap:]] += weight
                pairs[items[gap:], items[:-gap]] += weight
        return pairs.astype(np.float32)

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        return {}

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("item_knn is fitted by counting (fit_statistics), not by gradients")

    # -- ranking -----------------------------------------------------------------------------
    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        config = self.config
        normalised = self.cached_inference("normalised", (self.cooccurrence,), self._similarities)
        neighbourhood = self.cached_inference("neighbourhood", (self.item_counts,),
                                              lambda: torch.from_numpy(self.neighbourhood()))
        prior = config.prior_weight * torch.log1p(torch.clamp(self.item_counts, min=0.0))
        votes = torch.from_numpy(self._history_weights(users, history))[:, neighbourhood]
        scores = prior.unsqueeze(0).repeat(len(users), 1)
        scores[:, neighbourhood] += votes @ normalised
        return scores

    def item_weight_threshold(self, noise_std: float | None = None) -> float:
        """The diagonal weight an item needs to vote and be voted for: ``min_item_weight``, or more under noise.

        ``noise_std``: the symmetrised table's estimated noise, when the caller has it already.
        """
        if noise_std is None:
            noise_std = estimated_noise_std(self.symmetrised_cooccurrence())
        return max(self.config.min_item_weight, self.config.noise_threshold * noise_std)

    def symmetrised_cooccurrence(self) -> torch.Tensor:
        """The mean of the ``pair_releases`` released tables, averaged with its transpose.

        The exact table is symmetric (each pair is counted both ways), so a released one
        carries two independent noisy copies of every pair; their mean has half the noise
        variance. Post-processing: it costs no privacy.
        """
        return (self.cooccurrence + self.cooccurrence.T) / (2 * self.config.pair_releases)

    def _similarities(self) -> torch.Tensor:
        """The co-occurrence table normalised by both items' weights, zero for items below the threshold."""
        table = self.symmetrised_cooccurrence()
        noise_std = estimated_noise_std(table)
        diagonal = torch.diagonal(table)
        active = diagonal >= self.item_weight_threshold(noise_std)
        weight = torch.where(active, diagonal, torch.ones_like(diagonal))
        # Soft-thresholding: an entry within `pair_noise_threshold` noise deviations of zero is noise.
        shrink = self.config.pair_noise_threshold * noise_std
        pairs = torch.sign(table) * torch.clamp(table.abs() - shrink, min=0.0)
        similarities = pairs / weight.sqrt().unsqueeze(1) / weight.pow(
            self.config.similarity_exponent).unsqueeze(0)
        return similarities * (active.unsqueeze(1) & active.unsqueeze(0))

    def _history_weights(self, users: np.ndarray, history: InteractionLog) -> np.ndarray:
        """``[len(users), n_items]``: each user's recency weight on each recent distinct item."""
        weights = np.zeros((len(users), self.catalog.n_items), dtype=np.float32)
        decay = self.config.recency_decay
        for row, user in enumerate(users):
            start, end = history.user_offsets[user], history.user_offsets[user + 1]
            recent = _recent_distinct(history.item_ids[start:end], self.config.history_length)
            weights[row, recent] = decay ** np.arange(len(recent), dtype=np.float32)
        return weights


def estimated_noise_std(table: torch.Tensor) -> float:
    """The standard deviation of the Gaussian noise on a released table of non-negative sums.

    Every exact entry is at least zero, so a negative entry is noise on a (near) zero one:
    the root mean square of the negative entries estimates sigma (a little low, since
    entries above zero rarely go negative). No negative entry: no noise, 0. It reads only
    the released table, so it costs no privacy.
    """
    negative = table[table < 0].double()
    return float(torch.sqrt((negative**2).mean())) if negative.numel() else 0.0


def _recent_distinct(items: np.ndarray, limit: int) -> np.ndarray:
    """The last ``limit`` distinct items of a time-ordered sequence, most recent first."""
    reversed_items = items[::-1]
    _, first = np.unique(reversed_items, return_index=True)
    return reversed_items[np.sort(first)][:limit]
