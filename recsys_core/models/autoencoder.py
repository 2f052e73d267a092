"""Mult-DAE and Mult-VAE: autoencoders over a user's whole history (Liang et al., WWW 2018).

"Variational Autoencoders for Collaborative Filtering". A user is the multi-hot
vector of the items they interacted with. The encoder reads it (L2-normalised,
with dropout on the input, which is what makes the DAE denoising), the decoder
returns one logit per item, and the loss is the multinomial log-likelihood of the
user's items under the softmax of those logits. Mult-VAE encodes a Gaussian
(mean, log-variance), samples from it while training and adds a KL term whose
weight ``beta`` rises linearly from 0 to ``anneal_cap`` over ``total_anneal_steps``
training batches. The count of batches is a buffer, so the schedule is part of the
model's state: deterministic, checkpointed with the weights and, federated, shared
(the server averages the devices' counts like any other tensor).

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
    users = np.asarray(users, dtype=np.int64)
    starts, ends = log.user_offsets[users], log.user_offsets[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users)), counts)
    # Row index into the log of every interaction of every requested user, in order.
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    matrix = np.zeros((len(users), log.n_items), dtype=bool)
    matrix[rows, log.item_ids[np.repeat(starts, counts) + within]] = True
    return matrix


@dataclass(frozen=True)
class MultDAEConfig(ModelConfig):
    """Mult-DAE's hyper-parameters; the defaults are the paper's [I -> 600 -> 200 -> 600 -> I]."""

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


@dataclass(frozen=True)
class MultVAEConfig(MultDAEConfig):
    """Mult-VAE's hyper-parameters: Mult-DAE's plus the KL annealing schedule."""

    #: Largest weight of the KL term.
    anneal_cap: float = 0.2
    #: Training batches over which the KL weight rises from 0 to ``anneal_cap``.
    total_anneal_steps: int = 200_000


def _tanh_stack(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        if index:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class _MultAutoencoder(Recommender):
    """What Mult-DAE and Mult-VAE share: samples, input corruption, likelihood and scoring."""

    # One sample is a user's history, its loss summed over the history's items.
    example_unit = "user"
    config: MultDAEConfig
    encoder: nn.Sequential
    decoder: nn.Sequential

    def __init__(self, catalog: CatalogInfo, config: MultDAEConfig) -> None:
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
        # Stored as bool (a quarter of float32's memory); per_sample_loss converts each batch.
        return {"histories": torch.from_numpy(multi_hot_histories(log, users))}

    @staticmethod
    def _negative_log_likelihood(logits: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        return -(functional.log_softmax(logits, dim=1) * histories).sum(dim=1)

    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        if self.training:
            histories = torch.from_numpy(multi_hot_histories(history, users)).to(torch.float32)
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

        Equal to ``encoder[0](normalize(multi_hot))`` without dropout: a multi-hot row
        of n items has norm sqrt(n), so the product is the sum of the n weight columns
        over sqrt(n). A device ranks a short history against a wide catalogue, and this
        skips the dense ``[n_items, width]`` product (half of all the work per call).
        """
        first = self.encoder[0]
        assert isinstance(first, nn.Linear)
        users = np.asarray(users, dtype=np.int64)
        starts, ends = history.user_offsets[users], history.user_offsets[users + 1]
        rows = []
        for start, end in zip(starts, ends, strict=True):
            items = torch.from_numpy(np.unique(history.item_ids[start:end]))
            column_sum = first.weight.T.index_select(0, items).sum(dim=0)
            rows.append(column_sum / max(float(len(items)) ** 0.5, 1e-12))
        if not rows:
            return torch.zeros(0, first.out_features)
        return torch.stack(rows) + first.bias

    def logits(self, histories: torch.Tensor) -> torch.Tensor:
        """Item logits of ``[B, n_items]`` multi-hot histories (deterministic in eval mode)."""
        return self.decoder(self.code_from_first_layer(self.encoder[0](self._encoder_input(histories))))

    @abstractmethod
    def code_from_first_layer(self, first_layer_output: torch.Tensor) -> torch.Tensor:
        """The decoder's input from the encoder's first-layer output (before its activation)."""


class MultDAE(_MultAutoencoder):
    """Mult-DAE: a denoising autoencoder with a multinomial likelihood."""

    name = "mult_dae"
    config_class = MultDAEConfig

    def __init__(self, catalog: CatalogInfo, config: MultDAEConfig) -> None:
        super().__init__(catalog, config)
        widths = [catalog.n_items, *config.hidden_dims]
        self.encoder = _tanh_stack(widths)
        self.decoder = _tanh_stack(widths[::-1])
        self._init_weights()

    def code_from_first_layer(self, first_layer_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.encoder[1:](first_layer_output))

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        histories = batch["histories"].to(torch.float32)
        return self._negative_log_likelihood(self.logits(histories), histories)


class MultVAE(_MultAutoencoder):
    """Mult-VAE: a variational autoencoder with a multinomial likelihood and KL annealing."""

    name = "mult_vae"
    config_class = MultVAEConfig
    anneal_step: torch.Tensor

    def __init__(self, catalog: CatalogInfo, config: MultVAEConfig) -> None:
        super().__init__(catalog, config)
        self.config: MultVAEConfig = config
        widths = [catalog.n_items, *config.hidden_dims]
        # The last encoder layer emits the mean and the log-variance side by side.
        self.encoder = _tanh_stack([*widths[:-1], 2 * widths[-1]])
        self.decoder = _tanh_stack(widths[::-1])
        # Training batches seen so far: drives the KL weight. float32 so that federated
        # averaging treats it like any other tensor; exact up to 2**24 steps.
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.float32))
        self._init_weights()

    def kl_weight(self) -> float:
        """The current ``beta``: ``min(anneal_cap, step / total_anneal_steps)``."""
        if self.config.total_anneal_steps == 0:
            return self.config.anneal_cap
        return min(self.config.anneal_cap, float(self.anneal_step) / self.config.total_anneal_steps)

    def _encode(self, histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The code (sampled while training, the mean otherwise), the mean and the log-variance."""
        return self._code(self.encoder[0](self._encoder_input(histories)))

    def _code(self, first_layer_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_variance = self.encoder[1:](first_layer_output).chunk(2, dim=1)
        code = mean
        if self.training:
            code = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)
        return code, mean, log_variance

    def code_from_first_layer(self, first_layer_output: torch.Tensor) -> torch.Tensor:
        return self._code(first_layer_output)[0]

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        histories = batch["histories"].to(torch.float32)
        code, mean, log_variance = self._encode(histories)
        kl = -0.5 * (1 + log_variance - mean.pow(2) - log_variance.exp()).sum(dim=1)
        beta = self.kl_weight()
        if self.training and torch.is_grad_enabled():
            # One call per training batch; evaluation and no-grad calls leave the schedule alone.
            self.anneal_step += 1
        return self._negative_log_likelihood(self.decoder(code), histories) + beta * kl
