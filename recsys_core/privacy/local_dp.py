"""Interaction-level ("local") DP-SGD on one device, with Opacus.

A device trains on its own rows with DP-SGD: each step draws a Poisson sample of the
device's training samples (each joins with probability ``batch_size / num_samples``),
clips every sample's gradient to ``per_sample_clip_norm`` and adds Gaussian noise of
standard deviation ``noise_multiplier * per_sample_clip_norm`` to the sum. An empty
Poisson batch still takes a noise-only step and counts for the accountant, as Opacus
does: skipping it would release "the batch was empty", which the analysis does not cover.

What is private, and why the private parameters are noised too. The guarantee is
about what leaves the device: the shared parameters it sends back (and anything
computed from them). The private parameters (a user embedding) never leave, but
every shared gradient is computed through them; if they were trained without noise
they would carry the exact data into each later step, and the steps would no longer
compose as DP-SGD's analysis assumes. So one DP optimiser holds the shared *and* the
private parameters of the per-sample modules, each sample's gradient is clipped
jointly over both, and noise is added to both; the whole local trajectory is then
post-processing of the noised steps. (A GAN's generator, outside ``per_sample_modules``,
reads no data and gets a plain optimiser, see :mod:`recsys_core.models.irgan`.)

The unit of privacy is one *training sample* as the model builds them
(:meth:`~recsys_core.models.base.Recommender.private_training_samples`): a positive with its
negatives for NeuMF, a user's whole sequence for SASRec and GRU4Rec, a whole history
for Mult-DAE. As in Opacus, the number of samples on the device is treated as public:
it sets the sampling rate and the number of steps.

Opacus's wrappers are built once per model structure and process (:func:`private_engine`)
and the round's weights are copied into them: rebuilding them on every call costs
20-30x a plain client step (``../shared/notes/dependency-facts.md``). Ghost clipping
is used where the model supports it (``Recommender.ghost_clipping_supported``), else
Opacus's per-sample gradient hooks.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.validators import ModuleValidator

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError
from recsys_core.models.base import Batch, Recommender

ClippingMode = Literal["ghost", "hooks"]

#: Model structures whose Opacus wrappers a process keeps (one per distinct device size in practice).
ENGINE_CACHE_SIZE = 8


@dataclass(frozen=True)
class PoissonSchedule:
    """The steps of local DP-SGD over ``num_samples`` samples with expected batch size ``batch_size``."""

    num_samples: int
    batch_size: int

    @property
    def sampling_rate(self) -> float:
        return min(1.0, self.batch_size / self.num_samples)

    @property
    def steps_per_epoch(self) -> int:
        # One epoch: as many steps as a plain epoch has batches, as Opacus's DPDataLoader does.
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def expected_batch_size(self) -> int:
        """The denominator of the noised mean gradient (Opacus divides by it, not by the drawn size)."""
        return min(self.batch_size, self.num_samples)

    def steps(self, epochs: int) -> int:
        return epochs * self.steps_per_epoch


def clipping_mode(model: Recommender) -> ClippingMode:
    return "ghost" if model.ghost_clipping_supported else "hooks"


class PrivateEngine:
    """Opacus's per-sample machinery around one model structure, reused across calls.

    Holds its own copy of the model (fixed by ``ModuleValidator`` where Opacus needs
    it, e.g. ``nn.GRU`` becomes ``DPGRU`` with the same parameter names) wrapped for
    per-sample clipping. :meth:`load` copies a round's weights in; optimisers are cheap
    and are made per call, so no optimiser state leaks from one device to the next.
    """

    def __init__(self, template: Recommender) -> None:
        model = copy.deepcopy(template)
        if not ModuleValidator.is_valid(model):
            model = ModuleValidator.fix(model)
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(f"privacy.local: Opacus cannot train model {template.name!r}: {errors[0]}")
        self.model: Recommender = model.train()
        # By name, as the model reports them (a DPGRU keeps nn.GRU's parameter names).
        self._tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self.mode: ClippingMode = clipping_mode(template)
        module = _per_sample_module(model)
        self.wrapped: GradSampleModule | GradSampleModuleFastGradientClipping
        if self.mode == "ghost":
            self.wrapped = GradSampleModuleFastGradientClipping(module, loss_reduction="mean", use_ghost_clipping=True)
        else:
            self.wrapped = GradSampleModule(module, loss_reduction="mean")

    def load(self, source: Recommender) -> None:
        """Copies every parameter and buffer (non-persistent ones too) of ``source`` into the engine's model."""
        with torch.no_grad():
            for name, tensor in [*source.named_parameters(), *source.named_buffers()]:
                self._tensors[name].copy_(tensor)

    def optimizer(
        self,
        inner: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        clip_norm: float,
        schedule: PoissonSchedule,
        noise_generator: np.random.Generator,
    ) -> DPOptimizer:
        """Wraps ``inner`` (over the per-sample parameters) in the DP optimiser of this engine's mode, drawing
        its noise from ``noise_generator`` (a secret: ChaCha20 from OS entropy, :func:`secret_generator`)."""
        kind: type[DPOptimizer] = SecretNoiseFastGradientClipping if self.mode == "ghost" else SecretNoiseDPOptimizer
        if self.mode == "ghost":
            self.wrapped.max_grad_norm = clip_norm
        optimizer = kind(inner, noise_multiplier=noise_multiplier, max_grad_norm=clip_norm,
                         expected_batch_size=schedule.expected_batch_size, loss_reduction="mean")
        optimizer.noise_source = noise_generator
        return optimizer

    def step(self, optimizer: DPOptimizer, batch: Batch) -> torch.Tensor:
        """One clipped and noised step on a non-empty batch; returns the per-sample losses (detached)."""
        optimizer.zero_grad(set_to_none=True)
        losses = self.model.per_sample_loss(batch)
        check_per_sample_loss(losses, len(next(iter(batch.values()))))
        if self.mode == "ghost":
            DPTensorFastGradientClipping(self.wrapped, optimizer, losses, "mean").backward()
        else:
            losses.mean().backward()
        optimizer.step()
        return losses.detach()

    @staticmethod
    def noise_only_step(optimizer: DPOptimizer, generator: np.random.Generator) -> None:
        """The step of an empty Poisson batch: the clipped sum is zero, the noise is not.

        Done by hand because Opacus's ghost clipping fails on empty batches.
        """
        standard_deviation = optimizer.noise_multiplier * optimizer.max_grad_norm
        for parameter in optimizer.params:
            noise = secret_noise(generator, standard_deviation, parameter)
            parameter.grad = noise / optimizer.expected_batch_size
        optimizer.original_optimizer.step()
        optimizer.original_optimizer.zero_grad(set_to_none=True)


def secret_noise(generator: np.random.Generator, standard_deviation: float, like: torch.Tensor) -> torch.Tensor:
    """Gaussian noise shaped like ``like``, drawn from ``generator`` (not torch's statistical Mersenne Twister)."""
    values = generator.normal(0.0, standard_deviation, size=tuple(like.shape)) if standard_deviation > 0 \
        else np.zeros(tuple(like.shape))
    return torch.from_numpy(values).to(dtype=like.dtype, device=like.device)


class _SecretNoise:
    """Opacus's ``add_noise``, with the noise drawn from a numpy generator the device holds secret.

    Opacus draws DP-SGD's noise from a ``torch.Generator`` (Mersenne Twister, whose state its output
    reveals); its ``secure_mode`` needs torchcsprng, which is no longer maintained. Here the noise comes
    from the device's secret generator: ChaCha20 keyed from OS entropy (:mod:`recsys_core.privacy.secrets`).
    """

    noise_source: np.random.Generator
    params: list[torch.nn.Parameter]
    noise_multiplier: float
    max_grad_norm: float

    def add_noise(self) -> None:
        multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        for parameter in self.params:
            _check_processed_flag(parameter.summed_grad)  # type: ignore[attr-defined]
            noise = secret_noise(self.noise_source, multiplier * self.max_grad_norm,
                                 parameter.summed_grad)  # type: ignore[attr-defined]
            parameter.grad = (parameter.summed_grad + noise).view_as(parameter)  # type: ignore[attr-defined]
            _mark_as_processed(parameter.summed_grad)  # type: ignore[attr-defined]


class SecretNoiseDPOptimizer(_SecretNoise, DPOptimizer):
    """Opacus's DP optimiser (per-sample gradients from hooks) with secret noise."""


class SecretNoiseFastGradientClipping(_SecretNoise, DPOptimizerFastGradientClipping):
    """Opacus's ghost-clipping DP optimiser with secret noise."""


def _per_sample_module(model: Recommender) -> torch.nn.Module:
    """What Opacus wraps: the whole model, or the one sub-module that reads data (a GAN's discriminator)."""
    if not model.per_sample_modules:
        return model
    if len(model.per_sample_modules) > 1:
        raise ConfigError(f"privacy.local: model {model.name!r} names several per-sample modules; "
                          "local DP supports one")
    return model.get_submodule(model.per_sample_modules[0])


def check_per_sample_loss(losses: torch.Tensor, batch_size: int) -> None:
    """Rejects anything but a ``[B]`` loss: Opacus silently mis-clips a ``[B, 1]`` one."""
    if losses.dim() != 1 or len(losses) != batch_size:
        raise ValueError(f"per_sample_loss must return shape [{batch_size}], got {list(losses.shape)}")


_ENGINES: OrderedDict[Hashable, PrivateEngine] = OrderedDict()


def _structure_key(model: Recommender) -> Hashable:
    catalog = model.catalog
    features = None if catalog.item_features is None else catalog.item_features.shape
    return type(model), model.config, catalog.n_users, catalog.n_items, features


def private_engine(model: Recommender) -> PrivateEngine:
    """The engine for ``model``'s structure (class, hyper-parameters, table sizes), with ``model``'s weights loaded."""
    key = _structure_key(model)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = PrivateEngine(model)
        _ENGINES[key] = engine
        while len(_ENGINES) > ENGINE_CACHE_SIZE:
            _ENGINES.popitem(last=False)
    _ENGINES.move_to_end(key)
    engine.load(model)
    return engine


def run_private_epochs(
    engine: PrivateEngine,
    log: InteractionLog,
    optimizer: DPOptimizer,
    auxiliary_optimizers: Sequence[torch.optim.Optimizer],
    epochs: int,
    schedule: PoissonSchedule,
    sample_generator: np.random.Generator,
    secret_generator: np.random.Generator,
    noise_generator: np.random.Generator,
    first_epoch: Batch | None = None,
) -> list[float]:
    """DP-SGD for ``epochs`` epochs of ``schedule.steps_per_epoch`` Poisson-sampled steps each.

    ``sample_generator`` builds each epoch's samples (negatives), as in plain training;
    ``secret_generator`` draws the Poisson batches and ``noise_generator`` the noise:
    both must be unknown to the server, or neither the noise nor the sampling protects
    anything. ``first_epoch`` reuses samples already built (to count them before training).
    Returns the mean per-sample loss of each epoch; it is exact, so it must not leave the device.
    """
    model = engine.model
    losses = []
    with warnings.catch_warnings():
        # Opacus's hooks on embeddings (integer inputs need no gradient) make torch warn on every backward.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for epoch in range(epochs):
            samples = first_epoch if epoch == 0 and first_epoch is not None else model.private_training_samples(
                log, sample_generator)
            if samples_count(samples) != schedule.num_samples:
                raise RuntimeError(f"{model.name} built {samples_count(samples)} samples in epoch {epoch + 1}, "
                                   f"but the privacy accounting assumed {schedule.num_samples}")
            total, count = 0.0, 0
            for _ in range(schedule.steps_per_epoch):
                chosen = np.flatnonzero(secret_generator.random(schedule.num_samples) < schedule.sampling_rate)
                if len(chosen) == 0:
                    engine.noise_only_step(optimizer, noise_generator)
                else:
                    index = torch.from_numpy(chosen)
                    per_sample = engine.step(optimizer, {name: values[index] for name, values in samples.items()})
                    total, count = total + float(per_sample.sum()), count + len(chosen)
                # A GAN's generator steps: they read only the DP-trained discriminator, without gradient.
                model.take_auxiliary_steps(auxiliary_optimizers)
            losses.append(total / max(count, 1))
        optimizer.zero_grad(set_to_none=True)
    return losses


def samples_count(samples: Batch) -> int:
    return len(next(iter(samples.values()))) if samples else 0


def grouped_optimizer(
    groups: Sequence[tuple[list[torch.nn.Parameter], float]],
    make: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer],
) -> torch.optim.Optimizer | None:
    """One optimiser over ``(parameters, learning_rate)`` groups; None when every group is empty.

    One optimiser rather than one per group: Opacus clips each sample's gradient over
    all of its optimiser's parameters at once, which is what the privacy analysis needs.
    """
    non_empty = [(parameters, rate) for parameters, rate in groups if parameters]
    if not non_empty:
        return None
    optimizer = make(*non_empty[0])
    for parameters, rate in non_empty[1:]:
        optimizer.add_param_group({"params": parameters, "lr": rate})
    return optimizer
