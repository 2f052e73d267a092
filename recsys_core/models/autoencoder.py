"""The base of Mult-DAE and Mult-VAE: autoencoders over a user's whole history (Liang et al., WWW 2018).

"Variational Autoencoders for Collaborative Filtering". A user is the multi-hot
vector of the items they interacted with. The encoder reads it (L2-normalised,
with dropout on the input), the decoder returns one logit per item, and the loss
is the multinomial log-likelihood of the user's items under the softmax of those
logits. This file holds what both models share: the input, its corruption, the
likelihood and the ranking; ``mult_dae.py`` and ``mult_vae.py`` each add their
encoder's code and their loss.

Every parameter is shared; there is no user embedding, so nothing is private. A
user's representation is computed from their history each time (``score`` encodes
the ``history`` log), which is also why these models score users they never saw.

Privacy: one training sample is one user's whole history. On a single-user device
the local dataset is that one sample, so local DP-SGD protects nothing that is
worth its cost: the "sample" it protects is the whole user, its clipping bounds the
device's entire update, and with a dataset of one there is no subsampling to
amplify the noise, so any useful epsilon drowns the signal. These models need
user-level DP across devices (DP-FedAvg: clip each device's update, add noise to
the sum). Local DP-SGD is meaningful for them only in central training, where a
sample is one user among many.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, CatalogInfo, ModelConfig, Recommender


def multi_hot_histories(log: InteractionLog, users: np.ndarray) -> np.ndarray:
    """``bool [len(users), n_items]``: True where the user interacted with the item."""
    rows, log_rows = _history_rows(log, users)
    matrix = np.zeros((len(np.asarray(users)), log.n_items), dtype=bool)
    matrix[rows, log.item_ids[log_rows]] = True
    return matrix


def history_vectors(log: InteractionLog, users: np.ndarray) -> np.ndarray:
    """The autoencoders' input: each user's summed interaction weights, ``float32 [len(users), n_items]``.

    Multi-hot (``bool``, a quarter of the memory) when ``log`` has no weights: Liang et
    al.'s likelihood is over click counts, and a weighted log gives it those.
    """
    if log.weights is None:
        return multi_hot_histories(log, users)
    rows, log_rows = _history_rows(log, users)
    matrix = np.zeros((len(np.asarray(users)), log.n_items), dtype=np.float32)
    np.add.at(matrix, (rows, log.item_ids[log_rows]), log.weights[log_rows])
    return matrix


def _history_rows(log: InteractionLog, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every interaction of every requested user: its row in the output and its row in ``log``."""
    users = np.asarray(users, dtype=np.int64)
    starts, ends = log.user_offsets[users], log.user_offsets[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users)), counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, np.repeat(starts, counts) + within


@dataclass(frozen=True)
class MultAutoencoderConfig(ModelConfig):
    """Hyper-parameters both autoencoders have; the defaults are the paper's [I -> 600 -> 200 -> 600 -> I]."""

    #: Encoder widths from the input side; the decoder mirrors them. The last is the code size.
    hidden_dims: tuple[int, ...] = (600, 200)
    #: Dropout on the (normalised) input history.
    dropout: float = 0.5
    #: Precision of the catalogue-wide output layer when ranking (training is always float32).
    #: Ranking reads that whole ``[n_items, width]`` matrix on every call and is bound by
    #: memory bandwidth; "float16" halves the bytes read, with logits good to about three
    #: significant digits, so only near-ties can swap. An on-device option, off by default.
    ranking_dtype: str = "float32"

    def validate(self) -> None:
        super().validate()
        if self.ranking_dtype not in ("float32", "float16"):
            raise ConfigError(f"model.ranking_dtype: must be 'float32' or 'float16', got {self.ranking_dtype!r}")
        if not self.hidden_dims or min(self.hidden_dims) <= 0:
            raise ConfigError("model.hidden_dims: needs at least one positive width")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must lie in [0, 1), got {self.dropout}")


def tanh_stack(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        if index:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class MultAutoencoder(Recommender):
    """What Mult-DAE and Mult-VAE share: samples, input corruption, likelihood and scoring."""

    # One sample is a user's history, its loss summed over the history's items.
    example_unit = "user"
    uses_interaction_weights = True
    config: MultAutoencoderConfig
    encoder: nn.Sequential
    decoder: nn.Sequential

    def __init__(self, catalog: CatalogInfo, config: MultAutoencoderConfig) -> None:
        super().__init__(catalog, config)
        self.input_dropout = nn.Dropout(config.dropout)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.normal_(module.bias, std=0.001)

    def _encoder_input(self, histories: torch.Tensor) -> torch.Tensor:
        return self.input_dropout(functional.normalize(histories, dim=1))

    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        users = np.flatnonzero(np.diff(log.user_offsets) > 0)
        # Stored as bool when unweighted (a quarter of float32's memory); per_sample_loss converts each batch.
        return {"histories": torch.from_numpy(history_vectors(log, users))}

    @staticmethod
    def _negative_log_likelihood(logits: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        return -(functional.log_softmax(logits, dim=1) * histories).sum(dim=1)

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        if self.training:
            histories = torch.from_numpy(history_vectors(history, users)).to(torch.float32)
            return self.logits(histories)
        code = self.code_from_first_layer(self._sparse_first_layer(users, history))
        if self.config.ranking_dtype == "float32":
            return self.decoder(code)
        output = self.decoder[-1]
        assert isinstance(output, nn.Linear)
        half_weight, half_bias = (self.cached_inference(f"half_{name}", (tensor,), tensor.half)
                                  for name, tensor in (("weight", output.weight), ("bias", output.bias)))
        return functional.linear(self.decoder[:-1](code).half(), half_weight, half_bias).float()

    def _sparse_first_layer(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        """The encoder's first layer on the normalised histories, reading only the items seen.

        Equal to ``encoder[0](normalize(history_vectors))`` without dropout: a multi-hot
        row of n items has norm sqrt(n), so the product is the sum of the n weight columns
        over sqrt(n) (a weighted row: their weighted sum over the weights' norm). A device
        ranks a short history against a wide catalogue, and this skips the dense
        ``[n_items, width]`` product (half of all the work per call).
        """
        first = self.encoder[0]
        assert isinstance(first, nn.Linear)
        users = np.asarray(users, dtype=np.int64)
        starts, ends = history.user_offsets[users], history.user_offsets[users + 1]
        rows = []
        for start, end in zip(starts, ends, strict=True):
            items, inverse = np.unique(history.item_ids[start:end], return_inverse=True)
            columns = first.weight.T.index_select(0, torch.from_numpy(items))
            if history.weights is None:
                rows.append(columns.sum(dim=0) / max(float(len(items)) ** 0.5, 1e-12))
                continue
            weights = torch.from_numpy(np.bincount(inverse, weights=history.weights[start:end],
                                                   minlength=len(items)).astype(np.float32))
            rows.append(weights @ columns / weights.norm().clamp_min(1e-12))
        if not rows:
            return torch.zeros(0, first.out_features)
        return torch.stack(rows) + first.bias

    def logits(self, histories: torch.Tensor) -> torch.Tensor:
        """Item logits of ``[B, n_items]`` multi-hot histories (deterministic in eval mode)."""
        return self.decoder(self.code_from_first_layer(self.encoder[0](self._encoder_input(histories))))

    @abstractmethod
    def code_from_first_layer(self, first_layer_output: torch.Tensor) -> torch.Tensor:
        """The decoder's input from the encoder's first-layer output (before its activation)."""
