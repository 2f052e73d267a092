"""GRU4Rec: recurrent next-item recommendation (Hidasi et al., ICLR 2016).

"Session-based Recommendations with Recurrent Neural Networks". A GRU reads a
user's last ``max_length`` items and, at every position, scores the next item by
the dot product of its hidden state with an output item embedding. Training uses
the paper's BPR loss, ``-log sigmoid(positive - negative)``, with one sampled unseen
item per position; samples are left-padded sequences as for SASRec (inputs, the
next item at each position, and a negative at each position). Sessions here are a
user's whole history, which is how GRU4Rec is commonly run on rating logs.

The recurrent layer is ``nn.GRU``. Opacus cannot compute its per-sample gradients,
but ``opacus.validators.ModuleValidator.fix`` swaps it for ``DPGRU``, which has the
same parameters under the same state-dict names. (Nested in a model, Opacus 1.6's
``DPGRU`` also lists every tensor a second time under its internal name, which
breaks loading either way; two state-dict hooks keep this model's state dict the
same with or without the swap, so a fixed client model and an unfixed server model
exchange weights unchanged.) Under Opacus's per-sample hooks the
embedding's ``padding_idx`` is ignored and the padding row would receive gradient
from the padded positions; the embedding output is therefore multiplied by a
non-padding mask, which makes that gradient exactly zero in every mode.

GRU4Rec has no user embedding, so nothing is private: a device's history stays
local and only shared weights leave it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from recsys_core.data.interactions import InteractionLog
from recsys_core.data.sequences import PADDING_ITEM, next_item_samples, recent_item_sequences
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender


def _renamed_layers(model: nn.Module, prefix: str) -> list[tuple[str, dict[str, str]]]:
    """``(state-dict prefix, internal name -> public name)`` of each Opacus layer that renames its parameters."""
    return [(f"{prefix}{name}.", module.old_to_new) for name, module in model.named_modules()
            if isinstance(getattr(module, "old_to_new", None), dict)]


def _nn_gru_order(name: str) -> tuple[int, bool, int]:
    """Sort key giving nn.GRU's order: by layer, forward before reverse, then w_ih, w_hh, b_ih, b_hh."""
    kind, _, rest = name.rpartition("_l")
    layer, _, direction = rest.partition("_")
    return int(layer), direction == "reverse", ("weight_ih", "weight_hh", "bias_ih", "bias_hh").index(kind)


def _drop_internal_names(model: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for layer, old_to_new in _renamed_layers(model, prefix):
        for old in old_to_new:
            state_dict.pop(layer + old, None)
        # DPGRU lists biases before the hidden weights; a client that sends tensors in
        # state-dict order must match a server running nn.GRU, so restore nn.GRU's order.
        public = sorted(old_to_new.values(), key=_nn_gru_order)
        entries = list(state_dict.items())
        first = next(index for index, (key, _) in enumerate(entries) if key.startswith(layer))
        ordered = [(layer + name, state_dict[layer + name]) for name in public]
        rest = [(key, value) for key, value in entries[first:] if not key.startswith(layer)]
        for key, _ in entries[first:]:
            del state_dict[key]
        state_dict.update(ordered + rest)


def _add_internal_names(model: nn.Module, state_dict: dict, prefix: str, *_: object) -> None:
    for layer, old_to_new in _renamed_layers(model, prefix):
        for old, new in old_to_new.items():
            if layer + new in state_dict:
                state_dict[layer + old] = state_dict[layer + new]


@dataclass(frozen=True)
class GRU4RecConfig(ModelConfig):
    """GRU4Rec's hyper-parameters."""

    embedding_dim: int = 64
    hidden_dim: int = 100
    num_layers: int = 1
    max_length: int = 50
    #: Dropout on the input embeddings and on the GRU's output states.
    dropout: float = 0.25

    def validate(self) -> None:
        super().validate()
        for name in ("embedding_dim", "hidden_dim", "num_layers", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: must be at least 1")


class GRU4Rec(Recommender):
    """A GRU over the last ``max_length`` items that scores the next item at every position (BPR loss)."""

    name = "gru4rec"
    config_class = GRU4RecConfig

    def __init__(self, catalog: CatalogInfo, config: GRU4RecConfig) -> None:
        super().__init__(catalog, config)
        self.config: GRU4RecConfig = config
        self.item_embedding = nn.Embedding(catalog.n_items + 1, config.embedding_dim, padding_idx=PADDING_ITEM)
        self.gru = nn.GRU(
            config.embedding_dim, config.hidden_dim, num_layers=config.num_layers, batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        # Indexed by item id + 1 like the inputs; row 0 is only looked up at padded
        # positions, whose loss is masked to zero.
        self.output_embedding = nn.Embedding(catalog.n_items + 1, config.hidden_dim)
        nn.init.normal_(self.item_embedding.weight, std=config.embedding_dim ** -0.5)
        nn.init.normal_(self.output_embedding.weight, std=config.hidden_dim ** -0.5)
        # No-ops until ModuleValidator.fix swaps in DPGRU (hooks survive its deep copy).
        self.register_state_dict_post_hook(_drop_internal_names)
        self.register_load_state_dict_pre_hook(_add_internal_names)

    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden state after every position of ``[B, L]`` left-padded sequences; ``[B, L, hidden]``."""
        is_item = (sequences != PADDING_ITEM).unsqueeze(-1).to(torch.float32)
        inputs = self.dropout(self.item_embedding(sequences)) * is_item
        states, _ = self.gru(inputs)
        return self.dropout(states)

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        samples = next_item_samples(log, self.config.max_length, generator)
        return {name: torch.from_numpy(values) for name, values in samples.items()}

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        states = self.encode(batch["sequences"])
        # One lookup for positives and negatives together: Opacus's ghost clipping rejects a
        # module that is called twice in one forward pass.
        targets = self.output_embedding(torch.stack([batch["positives"], batch["negatives"]], dim=2))
        logits = (states.unsqueeze(2) * targets).sum(-1)  # [B, L, 2]
        counted = (batch["sequences"] != PADDING_ITEM).to(torch.float32)
        return (-functional.logsigmoid(logits[..., 0] - logits[..., 1]) * counted).sum(dim=1)

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        sequences = torch.from_numpy(recent_item_sequences(history, users, self.config.max_length))
        return self.encode(sequences)[:, -1, :] @ self.output_embedding.weight[1:].T
