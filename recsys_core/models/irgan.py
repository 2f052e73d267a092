"""IRGAN for item recommendation (Wang et al., SIGIR 2017), with DP on the discriminator only.

"IRGAN: A Minimax Game for Unifying Generative and Discriminative Information
Retrieval Models". Two matrix-factorisation models play a minimax game:

* the **discriminator** ``D(u, i)`` learns to tell the user's real items from items
  the generator proposes: binary cross-entropy on (user, real item) as 1 and
  (user, generated item) as 0. One training sample packs one real interaction
  with one generated item for the same user, so :meth:`IRGAN.per_sample_loss` is
  the discriminator's loss per sample ``[B]`` and per-sample clipping bounds the
  influence of each real interaction;
* the **generator** is a softmax policy ``p_G(i | u)`` over the catalogue that
  maximises the discriminator's reward ``2 * (sigmoid(D(u, i)) - 0.5)`` on its own
  proposals. IRGAN estimates that gradient with REINFORCE samples; here the
  expectation over the catalogue is computed exactly (the same gradient, without
  sampling variance), which costs one ``[B, n_items]`` product per step. Two
  departures from the paper, both needed without its MF pre-training: the
  objective adds ``entropy_weight`` times the policy's entropy, whose optimum is
  ``p_G ∝ exp(reward / entropy_weight)``, a ranking of the whole catalogue (the
  plain objective collapses onto the discriminator's top items, the user's own
  training items, and leaves the unseen items, the ones that get recommended,
  at their initial order: on the synthetic data it stayed at Popularity's NDCG);
  and nothing is pre-trained, since pre-training the generator on real data would
  break the privacy argument below.

The generator is the recommender by default: ``score`` ranks items by its logits,
as in the paper. ``recommend_with = "discriminator"`` ranks by the discriminator's
scores instead (IRGAN's reference code evaluates both players); training is the
same either way. With the federated Amazon Beauty config the generator ranked better
(test NDCG@10 0.0101 against 0.0093); with other recipes either player could lead
(docs/benchmarks.md). ``generator_steps`` sets how many generator steps follow each
discriminator step (one by default).

Generated items for the discriminator are drawn from ``p_G`` (restricted to items
the user has not seen) once per epoch, when :meth:`IRGAN.training_samples`
builds the epoch, as IRGAN's reference code does.

Why DP on the discriminator alone is enough. The generator's loss
(:meth:`IRGAN.auxiliary_loss`) reads the discriminator's scores, computed without
gradient, for users drawn uniformly from all user ids, and nothing else: no real
item, no history, not even which users the current batch holds. The generator's
parameters (item vectors, biases and user vectors) are therefore a function of
the DP-trained discriminator's successive states and of data-independent
randomness, i.e. post-processing, which cannot weaken the discriminator's DP
guarantee. The items drawn from ``p_G`` feed only the discriminator, whose clipped
and noised steps account for them (they avoid the user's seen items, so, as with
every model's sampled negatives, one interaction also shapes which items the
user's other samples are paired with). This is why IRGAN is used here rather than
CFGAN (Chae et al., CIKM 2018): CFGAN's generator is conditioned on the user's
real purchase vector and masks its output with it, so it reads real data directly
and would need DP of its own.

The user embeddings of both players are private; item embeddings and biases of
both are shared. ``per_sample_modules = ("discriminator",)`` tells a DP client to
wrap and clip only the discriminator; the generator gets a plain optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sampling import SeenItems
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender

# Bounds the [users x items] probability block drawn from at once (elements).
_SAMPLING_BLOCK = 1 << 22

#: Both players' initial embedding draws.
EMBEDDING_STD = 0.1


@dataclass(frozen=True)
class IRGANConfig(ModelConfig):
    """IRGAN's hyper-parameters (both players share the embedding size)."""

    embedding_dim: int = 32
    #: Weight of the generator policy's entropy in its objective; the optimal policy is
    #: ``p_G(i | u) ∝ exp(reward(u, i) / entropy_weight)``.
    entropy_weight: float = 0.5
    #: Users (drawn uniformly from all user ids) in each generator step.
    generator_users: int = 128
    #: Generator steps after each discriminator step.
    generator_steps: int = 1
    #: Which player ranks items: "generator" (the paper's choice) or "discriminator".
    recommend_with: Literal["generator", "discriminator"] = "generator"

    def validate(self) -> None:
        super().validate()
        if min(self.embedding_dim, self.generator_users, self.generator_steps) < 1:
            raise ConfigError("model.embedding_dim, model.generator_users and model.generator_steps must be at least 1")
        if self.recommend_with not in ("generator", "discriminator"):
            raise ConfigError(f"model.recommend_with: must be \"generator\" or \"discriminator\", "
                              f"got {self.recommend_with!r}")


class MatrixFactorization(nn.Module):
    """Scores ``<user vector, item vector> + item bias``: each player of the game."""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user_embedding.weight, std=EMBEDDING_STD)
        nn.init.normal_(self.item_embedding.weight, std=EMBEDDING_STD)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``[B, K]`` items for ``[B, 1]`` users; ``[B, K]``."""
        return (self.item_embedding(items) @ self.user_embedding(users).transpose(1, 2)).squeeze(2) + (
            self.item_bias(items).squeeze(2)
        )

    def all_items(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for ``[B, 1]`` users; ``[B, n_items]``."""
        return self.user_embedding(users).squeeze(1) @ self.item_embedding.weight.T + self.item_bias.weight.T


class IRGAN(Recommender):
    """A discriminator and a generator, both matrix factorisations; either may recommend."""

    name = "irgan"
    config_class = IRGANConfig
    private_modules = ("discriminator.user_embedding", "generator.user_embedding")
    per_sample_modules = ("discriminator",)
    has_auxiliary_phase = True

    @property
    def private_init_std(self) -> float:
        return EMBEDDING_STD

    def __init__(self, catalog: CatalogInfo, config: IRGANConfig) -> None:
        super().__init__(catalog, config)
        self.config: IRGANConfig = config
        self.discriminator = MatrixFactorization(catalog.n_users, catalog.n_items, config.embedding_dim)
        self.generator = MatrixFactorization(catalog.n_users, catalog.n_items, config.embedding_dim)

    def _generated_items(self, log: InteractionLog, generator: np.random.Generator) -> np.ndarray:
        """One item per row of ``log``, drawn from ``p_G(. | user)`` over items the user has not seen."""
        seen = SeenItems.from_logs(log)
        counts = np.diff(log.user_offsets)
        users = np.flatnonzero(counts)
        fakes = np.empty(log.n_interactions, dtype=np.int64)
        all_items = np.arange(log.n_items)
        block = max(1, _SAMPLING_BLOCK // max(log.n_items, 1))
        for first in range(0, len(users), block):
            chunk = users[first : first + block]
            with torch.no_grad():
                scores = self.generator.all_items(torch.from_numpy(chunk).unsqueeze(1))
            logits = scores.double().numpy()
            unseen = ~seen.contains(chunk[:, None], all_items[None, :])
            # A user who has seen everything draws from the whole catalogue rather than from nothing.
            unseen[~unseen.any(axis=1)] = True
            probabilities = np.where(unseen, np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
            cumulative = np.cumsum(probabilities, axis=1)
            cumulative /= cumulative[:, -1:]
            # Inverse-CDF sampling of every row at once: row k's CDF is shifted into [k, k + 1].
            shifted = (cumulative + np.arange(len(chunk))[:, None]).reshape(-1)
            owner = np.repeat(np.arange(len(chunk)), counts[chunk])
            draws = np.searchsorted(shifted, owner + generator.random(len(owner)), side="right")
            # Users are in id order and the log is sorted by user, so the chunk's rows are contiguous.
            rows = slice(log.user_offsets[chunk[0]], log.user_offsets[chunk[-1] + 1])
            fakes[rows] = np.minimum(draws - owner * log.n_items, log.n_items - 1)
        return fakes

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        return {
            "users": torch.from_numpy(log.user_ids).unsqueeze(1).contiguous(),
            "positives": torch.from_numpy(log.item_ids).unsqueeze(1).contiguous(),
            "generated": torch.from_numpy(self._generated_items(log, generator)).unsqueeze(1).contiguous(),
        }

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        # The real and the generated item in one call: Opacus's ghost clipping rejects a
        # module that is called twice in one forward pass.
        logits = self.discriminator(batch["users"], torch.cat([batch["positives"], batch["generated"]], dim=1))
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=1)

    def auxiliary_loss(self) -> torch.Tensor:
        """The generator's loss: minus its expected reward and entropy bonus, for random users.

        The users are drawn from all user ids with torch's generator, not taken from
        the batch, whose composition depends on the data; on a one-user device they are
        that user.
        """
        count = min(self.config.generator_users, self.catalog.n_users)
        users = torch.randperm(self.catalog.n_users)[:count].unsqueeze(1)
        with torch.no_grad():
            reward = 2.0 * (torch.sigmoid(self.discriminator.all_items(users)) - 0.5)
        log_policy = functional.log_softmax(self.generator.all_items(users), dim=1)
        return (log_policy.exp() * (self.config.entropy_weight * log_policy - reward)).sum(dim=1).mean()

    def auxiliary_steps(self) -> int:
        return self.config.generator_steps

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        recommender = self.generator if self.config.recommend_with == "generator" else self.discriminator
        return recommender.all_items(torch.as_tensor(users, dtype=torch.int64).unsqueeze(1))
