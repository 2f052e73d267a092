"""A hybrid of collaborative filtering and content: learned embeddings plus feature towers.

An item is represented by the sum of a learned item embedding and a content tower
over its features (the tower also gives part of its bias); a user by the sum of a
learned user embedding and a profile tower over the mean features of their last
``profile_length`` items. The score is the dot product plus the item's bias. This is
matrix factorisation with side information on both sides, as in the feature-based
hybrids of LightFM (Kula, 2015), with the content profile of
:mod:`recsys_core.models.content` on the user side.

Cold start is what the content parts are for. An item nobody interacted with in
training keeps its (near-zero) initial embedding and zero bias, so its score comes
from the content tower; a user with few interactions has an undertrained user
embedding, and the profile carries them. Training is pointwise with sampled
negatives and binary cross-entropy, as in the content model. (Hiding the learned
embedding at random during training, as DropoutNet does, did not improve how cold
items were ranked on the synthetic data, so the model does without it.)

The user embedding is private; item embeddings, item biases and both towers are
shared. The profile makes each sample read the user's previous ``profile_length``
interactions (see :mod:`recsys_core.models.content` for what that means for DP).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender
from recsys_core.models.content import (
    pointwise_loss,
    pointwise_samples,
    preceding_profiles,
    recent_profiles,
    require_item_features,
    tower,
)


@dataclass(frozen=True)
class HybridConfig(ModelConfig):
    """Hyper-parameters of the hybrid model."""

    embedding_dim: int = 32
    #: Hidden widths of both towers. Narrow on purpose: wide towers learn to recognise
    #: individual items by their exact features (a memorised popularity that says nothing
    #: about a new item). On the synthetic data, never-trained items were ranked with
    #: AUC 0.65 by (64,) towers and 0.67 by (16,).
    hidden_dims: tuple[int, ...] = (16,)
    profile_length: int = 20
    negatives_per_positive: int = 4

    def validate(self) -> None:
        super().validate()
        if self.embedding_dim < 1 or self.profile_length < 1:
            raise ConfigError("model.embedding_dim and model.profile_length must be at least 1")


class Hybrid(Recommender):
    """Matrix factorisation whose item and user vectors each add a content tower's output."""

    name = "hybrid"
    uses_item_features = True
    config_class = HybridConfig
    private_modules = ("user_embedding",)
    user_id_keys = ("users",)
    item_features: torch.Tensor

    def __init__(self, catalog: CatalogInfo, config: HybridConfig) -> None:
        super().__init__(catalog, config)
        self.config: HybridConfig = config
        features = require_item_features(catalog, self.name)
        n_features, dim = features.shape[1], config.embedding_dim
        self.register_buffer("item_features", torch.as_tensor(features, dtype=torch.float32), persistent=False)
        self.user_embedding = nn.Embedding(catalog.n_users, dim)
        self.item_embedding = nn.Embedding(catalog.n_items, dim)
        self.item_bias = nn.Embedding(catalog.n_items, 1)
        self.content_tower = tower(n_features, config.hidden_dims, dim + 1)
        self.profile_tower = tower(n_features, config.hidden_dims, dim)
        nn.init.normal_(self.user_embedding.weight, std=self.private_init_std)
        nn.init.normal_(self.item_embedding.weight, std=0.01)
        nn.init.zeros_(self.item_bias.weight)

    @property
    def private_init_std(self) -> float:
        return 0.01

    def _users(self, users: torch.Tensor, profiles: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` representations of ``[B, 1]`` user ids with ``[B, n_features]`` profiles."""
        return self.user_embedding(users).squeeze(1) + self.profile_tower(profiles)

    def _item_outputs(self, items: torch.Tensor) -> torch.Tensor:
        """``[..., d + 1]`` per item id: its vector with its bias last; learned part plus content part."""
        return self.content_tower(self.item_features[items]) + torch.cat(
            [self.item_embedding(items), self.item_bias(items)], dim=-1
        )

    def _items(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors ``[..., d]`` and biases ``[...]`` of item ids."""
        output = self._item_outputs(items)
        return output[..., :-1], output[..., -1]

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        rows, profiles = preceding_profiles(log, self.item_features.cpu().numpy(), self.config.profile_length)
        items = pointwise_samples(log, rows, self.config.negatives_per_positive, generator)
        return {
            "users": torch.from_numpy(log.user_ids[rows]).unsqueeze(1).contiguous(),
            "profiles": torch.from_numpy(profiles),
            "items": torch.from_numpy(items),
        }

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        users = self._users(batch["users"], batch["profiles"])
        vectors, biases = self._items(batch["items"])
        return pointwise_loss((vectors @ users.unsqueeze(2)).squeeze(2) + biases)

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        profiles = recent_profiles(history, users, self.item_features.cpu().numpy(), self.config.profile_length)
        user_vectors = self._users(torch.as_tensor(users, dtype=torch.int64).unsqueeze(1), torch.from_numpy(profiles))
        item_side = (self.item_embedding.weight, self.item_bias.weight, self.item_features,
                     *self.content_tower.parameters())
        catalogue = self.cached_inference(
            "catalogue", item_side, lambda: self._item_outputs(torch.arange(self.catalog.n_items)))
        return user_vectors @ catalogue[:, :-1].T + catalogue[:, -1]
