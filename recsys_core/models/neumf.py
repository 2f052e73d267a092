"""NeuMF: neural collaborative filtering (He et al., WWW 2017).

A GMF branch (element-wise product of user and item embeddings) and an MLP
branch (a tower over the concatenated embeddings) are fused by one output layer.
Trained pointwise: each observed (user, item) pair against ``negatives_per_positive``
sampled unseen items, with binary cross-entropy. A weighted log (play counts) weighs
each positive's term by its interaction weight, as Hu, Koren and Volinsky's confidence
does; the negatives weigh 1.

The two user embedding tables are private: on a device they hold one row, the
device's own user, and never leave it. Item embeddings and the towers are shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sampling import SeenItems, sample_unseen_items
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender

#: Every embedding's initial normal draw (He et al.).
EMBEDDING_STD = 0.01


@dataclass(frozen=True)
class NeuMFConfig(ModelConfig):
    gmf_dim: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16)
    dropout: float = 0.0
    negatives_per_positive: int = 4
    #: Pairs scored at once by :meth:`NeuMF.score`; bounds memory on large catalogues.
    score_chunk_pairs: int = 1_000_000

    def validate(self) -> None:
        super().validate()
        layers = self.mlp_layers
        # The first width is the user and item embeddings side by side: at least 1 + 1.
        if not layers or layers[0] < 2 or min(layers) < 1:
            raise ConfigError(f"model.mlp_layers: needs widths of at least 1, the first at least 2 (the user and "
                              f"item embeddings side by side), e.g. [64, 32, 16]; got {list(layers)}")


class NeuMF(Recommender):
    name = "neumf"
    config_class = NeuMFConfig
    private_modules = ("gmf_user_embedding", "mlp_user_embedding")
    user_id_keys = ("users",)
    uses_interaction_weights = True

    def __init__(self, catalog: CatalogInfo, config: NeuMFConfig) -> None:
        super().__init__(catalog, config)
        self.config: NeuMFConfig = config
        mlp_dim = config.mlp_layers[0] // 2
        self.gmf_user_embedding = nn.Embedding(catalog.n_users, config.gmf_dim)
        self.gmf_item_embedding = nn.Embedding(catalog.n_items, config.gmf_dim)
        self.mlp_user_embedding = nn.Embedding(catalog.n_users, mlp_dim)
        self.mlp_item_embedding = nn.Embedding(catalog.n_items, mlp_dim)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(config.mlp_layers[:-1], config.mlp_layers[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(config.dropout)]
        self.mlp = nn.Sequential(*layers)
        self.output = nn.Linear(config.gmf_dim + config.mlp_layers[-1], 1)
        for embedding in (self.gmf_user_embedding, self.gmf_item_embedding,
                          self.mlp_user_embedding, self.mlp_item_embedding):
            nn.init.normal_(embedding.weight, std=EMBEDDING_STD)

    @property
    def private_init_std(self) -> float:
        return EMBEDDING_STD

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[B, L]`` for ``users`` ``[B, 1]`` against ``items`` ``[B, L]``.

        Ids arrive 2-D because Opacus's per-sample gradient code for embeddings
        expects that shape; ``L`` is 1 for single pairs, or a positive with its negatives.
        """
        item_gmf, item_mlp = self.gmf_item_embedding(items), self.mlp_item_embedding(items)
        gmf = self.gmf_user_embedding(users) * item_gmf
        user_mlp = self.mlp_user_embedding(users).expand(-1, items.shape[1], -1)
        mlp_input = torch.cat([user_mlp, item_mlp], dim=2)
        return self.output(torch.cat([gmf, self.mlp(mlp_input)], dim=2)).squeeze(2)

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        """One sample per (user, item) pair: each positive and each of its negatives."""
        grouped = self.private_training_samples(log, generator)
        width = grouped["items"].shape[1]
        samples = {
            "users": grouped["users"].repeat_interleave(width, dim=0).contiguous(),
            "items": grouped["items"].reshape(-1, 1).contiguous(),
            "labels": grouped["labels"].reshape(-1, 1).contiguous(),
        }
        if "weights" in grouped:
            samples["weights"] = grouped["weights"].reshape(-1, 1).contiguous()
        return samples

    def private_training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        """One sample per interaction: its positive item with its negatives (``[n, 1 + negatives]``).

        Removing an interaction removes its negatives too, so under DP-SGD they must sit in
        one sample, clipped together; otherwise one interaction would be 1 + negatives samples.
        """
        negatives_per_positive = self.config.negatives_per_positive
        negatives = sample_unseen_items(
            log.user_ids, negatives_per_positive, SeenItems.from_logs(log), generator
        )
        items = np.concatenate([log.item_ids[:, None], negatives], axis=1)
        labels = np.tile(np.r_[1.0, np.zeros(negatives_per_positive)], (log.n_interactions, 1))
        samples = {
            "users": torch.from_numpy(np.asarray(log.user_ids)).unsqueeze(1).contiguous(),
            "items": torch.from_numpy(items).contiguous(),
            "labels": torch.from_numpy(labels.astype(np.float32)),
        }
        if log.weights is not None:
            weights = np.ones_like(labels, dtype=np.float32)
            weights[:, 0] = log.weights
            samples["weights"] = torch.from_numpy(weights)
        return samples

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        logits = self(batch["users"], batch["items"])
        terms = functional.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")
        if "weights" in batch:
            terms = terms * batch["weights"]
        return terms.sum(dim=1)

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        """Every item's logit for each user, computed as a few matrix products over the catalogue.

        Equal to ``forward`` on every (user, item) pair, but the MLP's first layer is split
        into its user and item halves: the item half is one ``[n_items, width]`` product
        shared by all users, instead of one concatenation and product per pair.
        """
        if len(self.mlp) == 0:
            return self._score_pairs(users)
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        mlp_dim = self.mlp_item_embedding.embedding_dim
        item_half = self._item_half(first, mlp_dim)
        item_gmf = self.gmf_item_embedding.weight
        output_gmf = self.output.weight[0, : item_gmf.shape[1]]
        output_mlp = self.output.weight[0, item_gmf.shape[1]:]
        n_items = self.catalog.n_items
        users_per_chunk = max(1, self.config.score_chunk_pairs // n_items)
        chunks = []
        for start in range(0, len(users), users_per_chunk):
            chunk = torch.as_tensor(users[start : start + users_per_chunk], dtype=torch.int64)
            user_half = self.mlp_user_embedding(chunk) @ first.weight[:, :mlp_dim].T + first.bias  # [B, width]
            hidden = self.mlp[1:](item_half.unsqueeze(0) + user_half.unsqueeze(1))  # [B, n_items, last]
            gmf = (self.gmf_user_embedding(chunk) * output_gmf) @ item_gmf.T  # [B, n_items]
            chunks.append(gmf + hidden @ output_mlp + self.output.bias)
        return torch.cat(chunks) if chunks else torch.zeros(0, n_items)

    def _item_half(self, first: nn.Linear, mlp_dim: int) -> torch.Tensor:
        """The item half of the MLP's first layer for every item, ``[n_items, width]``."""
        item_weight = self.mlp_item_embedding.weight
        return self.cached_inference("item_half", (item_weight, first.weight),
                                     lambda: item_weight @ first.weight[:, mlp_dim:].T)

    def _score_pairs(self, users: np.ndarray) -> torch.Tensor:
        n_items = self.catalog.n_items
        users_per_chunk = max(1, self.config.score_chunk_pairs // n_items)
        all_items = torch.arange(n_items)
        chunks = []
        for start in range(0, len(users), users_per_chunk):
            chunk = torch.as_tensor(users[start : start + users_per_chunk], dtype=torch.int64)
            pair_users = chunk.repeat_interleave(n_items).unsqueeze(1)
            pair_items = all_items.repeat(len(chunk)).unsqueeze(1)
            chunks.append(self(pair_users, pair_items).view(len(chunk), n_items))
        return torch.cat(chunks) if chunks else torch.zeros(0, n_items)
