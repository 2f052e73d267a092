"""Caser: convolutional sequence embedding (Tang & Wang, WSDM 2018).

"Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding". The embeddings of a user's last ``max_length`` (L) items form an
``L x d`` image. Horizontal filters of every height ``h = 1..L`` (width ``d``),
max-pooled over time, detect union-level and skip patterns; vertical filters
(``L x 1``) take weighted sums of the L embeddings (point-level patterns). A fully
connected layer turns both into a sequence vector ``z``, which is concatenated with
the user's embedding; an output item embedding and bias score every item from that.
Each training sample is one position of a user's history: the L items before it
and the next ``targets`` (T) items, each against ``negatives_per_target`` sampled
unseen items, with binary cross-entropy.

The user embedding is private; the item embeddings (input and output), the
convolutions and the fully connected layer are shared. Positions with no item
(short histories are left-padded) are zeroed explicitly after the lookup, so the
padding row never gets a gradient, not even under Opacus's per-sample hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sampling import SeenItems, sample_unseen_items
from recsys_core.data.sequences import PADDING_ITEM, recent_item_sequences
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender


@dataclass(frozen=True)
class CaserConfig(ModelConfig):
    """Caser's hyper-parameters; the defaults are the paper's (d=50, L=5, T=3, 4 vertical, 16 horizontal)."""

    embedding_dim: int = 50
    #: L: how many recent items the convolutions read.
    max_length: int = 5
    #: T: how many next items each training sample predicts.
    targets: int = 3
    vertical_filters: int = 4
    #: Horizontal filters of each height 1..L.
    horizontal_filters: int = 16
    dropout: float = 0.5
    negatives_per_target: int = 3

    def validate(self) -> None:
        super().validate()
        for name in ("embedding_dim", "max_length", "targets", "vertical_filters", "horizontal_filters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: must be at least 1")


class Caser(Recommender):
    """Convolutions over the last L item embeddings plus a private user embedding; predicts the next T items."""

    name = "caser"
    config_class = CaserConfig
    private_modules = ("user_embedding",)
    user_id_keys = ("users",)

    def __init__(self, catalog: CatalogInfo, config: CaserConfig) -> None:
        super().__init__(catalog, config)
        self.config: CaserConfig = config
        dim, length = config.embedding_dim, config.max_length
        self.user_embedding = nn.Embedding(catalog.n_users, dim)
        self.item_embedding = nn.Embedding(catalog.n_items + 1, dim, padding_idx=PADDING_ITEM)
        self.vertical = nn.Conv2d(1, config.vertical_filters, (length, 1))
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, config.horizontal_filters, (height, dim)) for height in range(1, length + 1)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.fully_connected = nn.Linear(config.vertical_filters * dim + config.horizontal_filters * length, dim)
        # Output side: one 2d-vector and one bias per item, scored against [z; user embedding].
        self.output_embedding = nn.Embedding(catalog.n_items, 2 * dim)
        self.output_bias = nn.Embedding(catalog.n_items, 1)
        nn.init.normal_(self.user_embedding.weight, std=self.private_init_std)
        nn.init.normal_(self.item_embedding.weight, std=1.0 / dim)
        nn.init.normal_(self.output_embedding.weight, std=1.0 / (2 * dim))
        nn.init.zeros_(self.output_bias.weight)

    @property
    def private_init_std(self) -> float:
        return 1.0 / self.config.embedding_dim

    def user_state(self, users: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """``[z; user embedding]`` for ``[B, 1]`` users and ``[B, L]`` left-padded sequences; ``[B, 2d]``."""
        is_item = (sequences != PADDING_ITEM).unsqueeze(-1).to(torch.float32)
        image = (self.item_embedding(sequences) * is_item).unsqueeze(1)  # [B, 1, L, d]
        vertical = self.vertical(image).flatten(1)
        horizontal = [
            functional.relu(convolution(image).squeeze(3)).amax(dim=2) for convolution in self.horizontal
        ]
        features = self.dropout(torch.cat([vertical, *horizontal], dim=1))
        sequence_vector = functional.relu(self.fully_connected(features))
        return torch.cat([sequence_vector, self.user_embedding(users).squeeze(1)], dim=1)

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        length, targets = self.config.max_length, self.config.targets
        owner_start = log.user_offsets[log.user_ids]
        owner_end = log.user_offsets[log.user_ids + 1]
        # Every row that has at least one earlier row of the same user starts a sample.
        rows = np.flatnonzero(np.arange(log.n_interactions) > owner_start)
        inputs = rows[:, None] - length + np.arange(length)[None, :]
        inputs_valid = inputs >= owner_start[rows, None]
        sequences = np.where(inputs_valid, log.item_ids[np.clip(inputs, 0, None)] + 1, PADDING_ITEM)
        upcoming = rows[:, None] + np.arange(targets)[None, :]
        upcoming_valid = upcoming < owner_end[rows, None]
        # Past the user's last item a target is masked out; item 0 only fills the slot.
        next_items = np.where(upcoming_valid, log.item_ids[np.clip(upcoming, None, log.n_interactions - 1)], 0)
        negatives = sample_unseen_items(
            log.user_ids[rows], targets * self.config.negatives_per_target, SeenItems.from_logs(log), generator
        )
        return {
            "users": torch.from_numpy(log.user_ids[rows]).unsqueeze(1).contiguous(),
            "sequences": torch.from_numpy(np.ascontiguousarray(sequences, dtype=np.int64)),
            "targets": torch.from_numpy(np.ascontiguousarray(next_items, dtype=np.int64)),
            "target_mask": torch.from_numpy(upcoming_valid.astype(np.float32)),
            "negatives": torch.from_numpy(np.ascontiguousarray(negatives)),
        }

    def _logits(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of ``[B, K]`` items for ``[B, 2d]`` user states; ``[B, K]``."""
        weights = self.output_embedding(items)  # [B, K, 2d]
        return (weights @ state.unsqueeze(2)).squeeze(2) + self.output_bias(items).squeeze(2)

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        state = self.user_state(batch["users"], batch["sequences"])
        # One lookup for targets and negatives together: Opacus's ghost clipping rejects a
        # module that is called twice in one forward pass.
        logits = self._logits(state, torch.cat([batch["targets"], batch["negatives"]], dim=1))
        labels = torch.zeros_like(logits)
        labels[:, : self.config.targets] = 1.0
        weights = torch.cat([batch["target_mask"], torch.ones_like(logits[:, self.config.targets :])], dim=1)
        losses = functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (losses * weights).sum(dim=1)

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        sequences = torch.from_numpy(recent_item_sequences(history, users, self.config.max_length))
        user_ids = torch.as_tensor(users, dtype=torch.int64).unsqueeze(1)
        state = self.user_state(user_ids, sequences)
        return state @ self.output_embedding.weight.T + self.output_bias.weight.squeeze(1)
