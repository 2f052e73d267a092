"""Popularity: ranks items by how many interactions they have in the training data.

The baseline every learned model must beat. It has no gradient-trained
parameters; federated, the item counts are what clients contribute (a sum).
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_core.data.interactions import InteractionLog
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender


class Popularity(Recommender):
    name = "popularity"
    trains_with_gradients = False
    item_counts: torch.Tensor

    def __init__(self, catalog: CatalogInfo, config: ModelConfig) -> None:
        super().__init__(catalog, config)
        self.register_buffer("item_counts", torch.zeros(catalog.n_items, dtype=torch.float32))

    def fit_statistics(self, log: InteractionLog) -> None:
        counts = np.bincount(log.item_ids, minlength=self.catalog.n_items).astype(np.float32)
        self.item_counts.copy_(torch.from_numpy(counts))

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        return {}

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError("Popularity is fitted by counting (fit_statistics), not by gradients")

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        return self.item_counts.unsqueeze(0).expand(len(users), -1)
