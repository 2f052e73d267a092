"""Mult-DAE: a denoising autoencoder over a user's whole history (Liang et al., WWW 2018).

"Variational Autoencoders for Collaborative Filtering". The encoder reads the
user's L2-normalised multi-hot history with dropout on it, which is what makes the
autoencoder denoising, through tanh layers down to a code; the decoder mirrors it
back to one logit per item, and the loss is the multinomial log-likelihood of the
user's items. The input, the likelihood, the ranking and the privacy argument are
shared with Mult-VAE (``autoencoder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys_core.models.autoencoder import MultAutoencoder, MultAutoencoderConfig, tanh_stack
from recsys_core.models.base import Batch, CatalogInfo


@dataclass(frozen=True)
class MultDAEConfig(MultAutoencoderConfig):
    """Mult-DAE's hyper-parameters: those every autoencoder has, nothing of its own."""


class MultDAE(MultAutoencoder):
    """Mult-DAE: a denoising autoencoder with a multinomial likelihood."""

    name = "mult_dae"
    config_class = MultDAEConfig

    def __init__(self, catalog: CatalogInfo, config: MultDAEConfig) -> None:
        super().__init__(catalog, config)
        widths = [catalog.n_items, *config.hidden_dims]
        self.encoder = tanh_stack(widths)
        self.decoder = tanh_stack(widths[::-1])
        self._init_weights()

    def code_from_first_layer(self, first_layer_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.encoder[1:](first_layer_output))

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        histories = batch["histories"].to(torch.float32)
        return self._negative_log_likelihood(self.logits(histories), histories)
