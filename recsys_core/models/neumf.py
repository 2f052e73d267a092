"""NeuMF: neural collaborative filtering (He et al., WWW 2017).

A GMF branch (element-wise product of user and item embeddings) and an MLP
branch (a tower over the concatenated embeddings) are fused by one output layer.
Trained pointwise: each observed (user, item) pair against ``negatives_per_positive``
sampled unseen items, with binary cross-entropy.

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
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender


@dataclass(frozen=True)
class NeuMFConfig(ModelConfig):
    gmf_dim: int = 32
    mlp_layers: tuple[int, ...] = (64, 32, 16)
    dropout: float = 0.0
    negatives_per_positive: int = 4
    #: Pairs scored at once by :meth:`NeuMF.score`; bounds memory on large catalogues.
    score_chunk_pairs: int = 1_000_000


class NeuMF(Recommender):
    name = "neumf"
    config_class = NeuMFConfig
    private_modules = ("gmf_user_embedding", "mlp_user_embedding")

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
            nn.init.normal_(embedding.weight, std=0.01)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of ``[B, 1]`` user and item id tensors; returns ``[B]``.

        Ids arrive 2-D because Opacus's per-sample gradient code for embeddings
        expects that shape.
        """
        gmf = self.gmf_user_embedding(users).squeeze(1) * self.gmf_item_embedding(items).squeeze(1)
        mlp_input = torch.cat(
            [self.mlp_user_embedding(users).squeeze(1), self.mlp_item_embedding(items).squeeze(1)], dim=1
        )
        return self.output(torch.cat([gmf, self.mlp(mlp_input)], dim=1)).squeeze(1)

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        negatives_per_positive = self.config.negatives_per_positive
        negatives = sample_unseen_items(
            log.user_ids, negatives_per_positive, SeenItems.from_logs(log), generator
        )
        users = np.repeat(log.user_ids, 1 + negatives_per_positive)
        items = np.concatenate([log.item_ids[:, None], negatives], axis=1).reshape(-1)
        labels = np.tile(np.r_[1.0, np.zeros(negatives_per_positive)], log.n_interactions)
        return {
            "users": torch.from_numpy(users).unsqueeze(1).contiguous(),
            "items": torch.from_numpy(items).unsqueeze(1).contiguous(),
            "labels": torch.from_numpy(labels.astype(np.float32)),
        }

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        logits = self(batch["users"], batch["items"])
        return functional.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
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
