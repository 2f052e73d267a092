"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

A causal Transformer reads a user's last ``max_length`` items and, at every
position, predicts the next one. Training pairs each next item with one sampled
unseen item (binary cross-entropy); scoring dots the last position's state with
every item embedding (input and output embeddings are tied, as in the paper).

Attention is written as ``nn.Linear`` projections plus
``torch.nn.functional.scaled_dot_product_attention`` rather than
``nn.MultiheadAttention``, because Opacus can compute per-sample gradients of
Linear layers but not of ``nn.MultiheadAttention`` with a causal mask.

SASRec has no user embedding, so it has no private parameters: a device's
privacy comes from keeping its sequence local, not from a private table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sequences import PADDING_ITEM, next_item_samples, recent_item_sequences
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender


@dataclass(frozen=True)
class SASRecConfig(ModelConfig):
    hidden_dim: int = 64
    max_length: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention that lets position t see positions <= t that hold an item."""

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.key = nn.Linear(hidden_dim, hidden_dim)
        self.value = nn.Linear(hidden_dim, hidden_dim)
        self.projection = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = dropout

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, width = states.shape
        return states.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        attended = functional.scaled_dot_product_attention(
            self._heads(self.query(queries)),
            self._heads(self.key(keys)),
            self._heads(self.value(keys)),
            attn_mask=allowed.unsqueeze(1),
            dropout_p=self.dropout if self.training else 0.0,
        )
        batch, _, length, _ = attended.shape
        return self.projection(attended.transpose(1, 2).reshape(batch, length, -1))


class TransformerBlock(nn.Module):
    """Pre-norm attention and a point-wise feed-forward layer, each with a residual, as in SASRec."""

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_dim, eps=1e-8)
        self.attention = CausalSelfAttention(hidden_dim, num_heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(hidden_dim, eps=1e-8)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.Dropout(dropout),
        )

    def forward(self, states: torch.Tensor, allowed: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        queries = self.attention_norm(states)
        states = queries + self.attention(queries, states, allowed)
        normed = self.feed_forward_norm(states)
        states = normed + self.feed_forward(normed)
        return states * is_item


class SASRec(Recommender):
    name = "sasrec"
    config_class = SASRecConfig
    # item_embedding embeds the inputs and scores positives and negatives: Opacus's ghost
    # clipping rejects a module called several times in one pass ("Parameter tying").
    ghost_clipping_supported = False

    def __init__(self, catalog: CatalogInfo, config: SASRecConfig) -> None:
        super().__init__(catalog, config)
        self.config: SASRecConfig = config
        if config.hidden_dim % config.num_heads:
            raise ConfigError("model.hidden_dim must be divisible by model.num_heads")
        self.item_embedding = nn.Embedding(catalog.n_items + 1, config.hidden_dim, padding_idx=PADDING_ITEM)
        self.position_embedding = nn.Embedding(config.max_length, config.hidden_dim)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.hidden_dim, config.num_heads, config.dropout) for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(config.hidden_dim, eps=1e-8)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_normal_(parameter)

    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position of ``[B, L]`` left-padded item sequences; ``[B, L, d]``."""
        length = sequences.shape[1]
        is_item = (sequences != PADDING_ITEM).unsqueeze(-1).to(torch.float32)
        # One row of positions per sample, not one shared [L] row: Opacus reads dimension 0 of every
        # layer's input as the batch, and a shared row gives wrong per-sample gradients for the
        # position embedding (silently when L equals the batch size, a crash in clipping otherwise).
        positions = torch.arange(length, device=sequences.device).expand_as(sequences).contiguous()
        states = self.item_embedding(sequences) * math.sqrt(self.config.hidden_dim)
        states = self.embedding_dropout(states + self.position_embedding(positions)) * is_item
        causal = torch.ones(length, length, dtype=torch.bool, device=sequences.device).tril()
        # Keys that are padding are hidden; each position may always see itself so no row is empty.
        allowed = causal & ((sequences != PADDING_ITEM).unsqueeze(1) | torch.eye(length, dtype=torch.bool))
        for block in self.blocks:
            states = block(states, allowed, is_item)
        return self.final_norm(states)

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        samples = next_item_samples(log, self.config.max_length, generator)
        return {name: torch.from_numpy(values) for name, values in samples.items()}

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        states = self.encode(batch["sequences"])
        positive_logits = (states * self.item_embedding(batch["positives"])).sum(-1)
        negative_logits = (states * self.item_embedding(batch["negatives"])).sum(-1)
        counted = (batch["sequences"] != PADDING_ITEM).to(torch.float32)
        losses = functional.binary_cross_entropy_with_logits(
            positive_logits, torch.ones_like(positive_logits), reduction="none"
        ) + functional.binary_cross_entropy_with_logits(
            negative_logits, torch.zeros_like(negative_logits), reduction="none"
        )
        return (losses * counted).sum(dim=1)

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        sequences = torch.from_numpy(recent_item_sequences(history, users, self.config.max_length))
        last_state = self.encode(sequences)[:, -1, :]
        return last_state @ self.item_embedding.weight[1:].T
