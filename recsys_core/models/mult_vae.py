"""Mult-VAE: a variational autoencoder over a user's whole history (Liang et al., WWW 2018).

"Variational Autoencoders for Collaborative Filtering". Where Mult-DAE encodes a
point, Mult-VAE encodes a Gaussian (mean, log-variance), samples from it while
training and adds a KL term to the multinomial likelihood, whose weight ``beta``
rises linearly from 0 to ``anneal_cap`` over ``total_anneal_steps`` training
batches. The count of batches is a buffer, so the schedule is part of the model's
state: deterministic, checkpointed with the weights and, federated, shared (the
server averages the devices' counts like any other tensor). The input, the
likelihood, the ranking and the privacy argument are shared with Mult-DAE
(``autoencoder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys_core.models.autoencoder import MultAutoencoder, MultAutoencoderConfig, tanh_stack
from recsys_core.models.base import Batch, CatalogInfo


@dataclass(frozen=True)
class MultVAEConfig(MultAutoencoderConfig):
    """Mult-VAE's hyper-parameters: those every autoencoder has plus the KL annealing schedule."""

    #: Largest weight of the KL term.
    anneal_cap: float = 0.2
    #: Training batches over which the KL weight rises from 0 to ``anneal_cap``.
    total_anneal_steps: int = 200_000


class MultVAE(MultAutoencoder):
    """Mult-VAE: a variational autoencoder with a multinomial likelihood and KL annealing."""

    name = "mult_vae"
    config_class = MultVAEConfig
    anneal_step: torch.Tensor

    def __init__(self, catalog: CatalogInfo, config: MultVAEConfig) -> None:
        super().__init__(catalog, config)
        self.config: MultVAEConfig = config
        widths = [catalog.n_items, *config.hidden_dims]
        # The last encoder layer emits the mean and the log-variance side by side.
        self.encoder = tanh_stack([*widths[:-1], 2 * widths[-1]])
        self.decoder = tanh_stack(widths[::-1])
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
