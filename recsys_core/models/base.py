"""The small interface every recommender in the zoo implements.

A model says four things:

1. which of its parameters are **shared** (federated: item embeddings, towers,
   attention weights) and which are **private** to one user (a user embedding,
   which never leaves the device);
2. how to turn a user's local history into one epoch of training samples
   (pairs with sampled negatives, a sequence, or a whole history as one sample);
3. a **per-sample** loss of shape ``[B]`` (1-D: Opacus clips per sample and
   silently mis-clips a ``[B, 1]`` loss);
4. ``score``: one score per catalogue item for each user, for ranking and for
   on-device recommendation.

Adversarial models need a second, alternating training step that a per-sample
loss cannot express. They name the sub-modules that :meth:`~Recommender.per_sample_loss`
trains in ``per_sample_modules`` (the discriminator: the only part that reads real
data, so the only part a DP engine wraps and clips), set ``has_auxiliary_phase``
and implement :meth:`~Recommender.auxiliary_loss` for the rest (the generator),
which reads no data. :func:`recsys_core.training.run_local_epochs` takes
:meth:`~Recommender.auxiliary_steps` auxiliary steps (one by default) after each
per-sample step. Every other model leaves these at their
defaults and trains as before.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError

Batch = dict[str, torch.Tensor]
"""Training samples keyed by input name; dimension 0 indexes samples."""


def training_counts(log: InteractionLog) -> np.ndarray:
    """``float64 [n_items]``: how many rows of ``log`` name each item."""
    return np.bincount(log.item_ids, minlength=log.n_items).astype(np.float64)


@dataclass(frozen=True)
class CatalogInfo:
    """What a model needs to know about the data to size itself."""

    n_users: int
    n_items: int
    item_features: np.ndarray | None = None  # float32 [n_items, n_features]
    #: Training interactions per item, ``[n_items]``: the catalogue-level statistic a
    #: bundle already ships for cold-start users (see ``recsys_core.bundle.bundle_catalog``).
    item_popularity: np.ndarray | None = None

    @classmethod
    def from_log(cls, log: InteractionLog) -> CatalogInfo:
        """The catalogue of a *training* log: its sizes, item features and per-item counts."""
        features = None if log.item_features is None else log.item_features.values
        return cls(n_users=log.n_users, n_items=log.n_items, item_features=features,
                   item_popularity=training_counts(log))


@dataclass(frozen=True)
class ModelConfig:
    """Base of each model's hyper-parameters; subclasses add fields with defaults."""

    @property
    def statistics_rounds(self) -> int:
        """Count-based models: how many federated rounds release their statistics, one part per round."""
        return 1

    def validate(self) -> None:
        for config_field in dataclasses.fields(self):
            value = getattr(self, config_field.name)
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"model.{config_field.name}: is NaN; give a number")
            if isinstance(value, float) and math.isinf(value):
                raise ConfigError(f"model.{config_field.name}: is {value}; give a finite number")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"model.{config_field.name}: must not be negative, got {value}")
            # A dropout of 1 or more would drop everything (torch refuses it only when the model is built).
            if config_field.name == "dropout" and not 0.0 <= value < 1.0:
                raise ConfigError(f"model.dropout: must lie in [0, 1), got {value}")


class Recommender(nn.Module, ABC):
    """Base class of every model. Subclasses set ``name`` and ``config_class``."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    #: Names (dotted paths allowed) of sub-modules whose parameters are indexed by user and
    #: private to that user.
    private_modules: ClassVar[tuple[str, ...]] = ()
    #: The entries of a training batch that hold (local) user ids, which index the private
    #: modules' first dimension: the cohort engine's batched round offsets them to stack devices.
    user_id_keys: ClassVar[tuple[str, ...]] = ()
    #: True for models built from the catalogue's item features (content-based, hybrid).
    uses_item_features: ClassVar[bool] = False
    #: True for models whose loss weighs each interaction by the log's ``weights`` (a
    #: play-count column); the others count every interaction once and ignore them.
    uses_interaction_weights: ClassVar[bool] = False
    #: False for count-based models (Popularity) that are fitted by :meth:`fit_statistics`.
    trains_with_gradients: ClassVar[bool] = True
    #: Sub-modules whose parameters :meth:`per_sample_loss` trains, i.e. what a DP engine must
    #: wrap; empty means the whole model. Parameters outside them belong to the auxiliary phase.
    per_sample_modules: ClassVar[tuple[str, ...]] = ()
    #: True when :meth:`auxiliary_loss` defines a second training step (a GAN's generator step).
    has_auxiliary_phase: ClassVar[bool] = False
    #: Whether Opacus's ghost clipping (its fastest per-sample clipping) handles the model;
    #: False makes local DP use per-sample gradient hooks instead.
    ghost_clipping_supported: ClassVar[bool] = True
    #: What FedAvg counts as one example when it weights a device's update (:meth:`example_count`).
    #: "user" suits a model whose one sample is a user's whole history with a loss summed over
    #: it (the autoencoders): that loss already grows with the history, so weighting by
    #: interactions as well would count a heavy user's history twice over.
    example_unit: ClassVar[Literal["interaction", "user"]] = "interaction"

    def __init__(self, catalog: CatalogInfo, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.catalog = catalog
        self.config = config

    # -- shared and private parameters -------------------------------------------------------
    def is_private(self, parameter_name: str) -> bool:
        """Whether a parameter (or buffer) belongs to one user and must stay on the device."""
        return any(parameter_name == module or parameter_name.startswith(module + ".")
                   for module in self.private_modules)

    def shared_state(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers that federated learning averages across devices."""
        return {k: v for k, v in self.state_dict().items() if not self.is_private(k)}

    def private_state(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers that never leave the device."""
        return {k: v for k, v in self.state_dict().items() if self.is_private(k)}

    @property
    def private_init_std(self) -> float:
        """The standard deviation of a private parameter's initial normal draw (models with private modules)."""
        raise NotImplementedError(f"{type(self).__name__} has no private parameters")

    def initial_private_state(self, n_users: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Fresh private parameters for ``n_users`` users, drawn from ``generator`` alone.

        A device's initial private rows then depend on its own seed and nothing else: not on
        building the whole model (the item tables' draws come first), so a simulation can
        draw 1,000 new devices' rows without building 1,000 models.
        """
        shapes = {name: tuple(value.shape[1:]) for name, value in self.private_state().items()}
        return {name: torch.randn((n_users, *shapes[name]), generator=generator) * self.private_init_std
                for name in sorted(shapes)}

    def example_count(self, log: InteractionLog) -> int:
        """How many examples a device holding ``log`` trains on, in :attr:`example_unit`."""
        if self.example_unit == "user":
            return int(np.count_nonzero(np.diff(log.user_offsets)))
        return log.n_interactions

    # -- training ----------------------------------------------------------------------------
    @abstractmethod
    def training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        """One epoch of training samples built from ``log`` (one user's or many users' rows).

        Negatives and any other randomness come from ``generator``.
        """

    def private_training_samples(self, log: InteractionLog, generator: np.random.Generator) -> Batch:
        """The samples DP-SGD clips one by one: each must hold all that one unit of privacy adds.

        The default is :meth:`training_samples`; a model whose samples split one
        interaction (NeuMF's separate negative pairs) groups them here.
        """
        return self.training_samples(log, generator)

    @abstractmethod
    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """The loss of each sample in ``batch``; shape ``[B]``."""

    def per_sample_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters :meth:`per_sample_loss` updates (those a DP optimiser gets)."""
        if not self.per_sample_modules:
            return [parameter for parameter in self.parameters() if parameter.requires_grad]
        return [parameter for name in self.per_sample_modules
                for parameter in self.get_submodule(name).parameters() if parameter.requires_grad]

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters :meth:`auxiliary_loss` updates: all the others."""
        per_sample = {id(parameter) for parameter in self.per_sample_parameters()}
        return [parameter for parameter in self.parameters()
                if parameter.requires_grad and id(parameter) not in per_sample]

    def auxiliary_loss(self) -> torch.Tensor:
        """Scalar loss of an auxiliary step; :meth:`take_auxiliary_steps` takes them after each per-sample step.

        Only models with ``has_auxiliary_phase`` implement it. It takes no batch on
        purpose: it must not read real data, nor which samples the current batch
        holds (DP-SGD's subsampling keeps that secret), only outputs of
        ``per_sample_modules`` computed without gradient and its own randomness
        from torch's generator. It updates only :meth:`auxiliary_parameters`, which
        are then post-processing of a DP-trained module and need no noise of their own.
        """
        raise NotImplementedError(f"{type(self).__name__} has no auxiliary training phase")

    def auxiliary_steps(self) -> int:
        """How many auxiliary steps follow each per-sample step (a GAN's generator steps)."""
        return 1

    def take_auxiliary_steps(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """The auxiliary phase after one per-sample step; nothing for a model without one.

        ``optimizers`` are plain (not DP) optimisers; each step zeroes their gradients
        first, so the per-sample phase's gradients never leak into it.
        """
        if not self.has_auxiliary_phase:
            return
        for _ in range(self.auxiliary_steps()):
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            self.auxiliary_loss().backward()
            for optimizer in optimizers:
                optimizer.step()

    @property
    def statistics_rounds(self) -> int:
        """Count-based models: how many federated rounds release their statistics (``config.statistics_rounds``)."""
        return self.config.statistics_rounds

    def fit_statistics(self, log: InteractionLog) -> None:
        """Fits count-based state; only models with ``trains_with_gradients = False`` need it."""

    def fit_statistics_round(self, log: InteractionLog, statistics_round: int) -> None:
        """Fits the part of the statistics that federated round ``statistics_round`` releases.

        A device calls it on the global model it received, so a later part may depend on
        what earlier rounds released. By default there is one part: all of :meth:`fit_statistics`.
        """
        self.fit_statistics(log)

    @classmethod
    def released_arrays(cls, statistics_round: int) -> tuple[str, ...] | None:
        """The shared arrays round ``statistics_round`` of a count-based model changes; None: all of them.

        The others' updates are zero on every device whatever its data, so user-level DP
        adds no noise to them and the server keeps them as they were.
        """
        return None

    # -- inference ---------------------------------------------------------------------------
    @abstractmethod
    def score(self, users: np.ndarray, history: InteractionLog) -> torch.Tensor:
        """Scores of every item for each user, ``[len(users), n_items]``; higher ranks first.

        ``history`` holds what each user has interacted with so far (sequence models
        read it; embedding models may ignore it).
        """

    def cached_inference(self, name: str, inputs: tuple[torch.Tensor, ...],
                         compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, memoised under ``name`` until one of ``inputs`` changes.

        For item-side work that scoring repeats on every call (an item tower over the
        whole catalogue): a device ranking again and again pays for it once per weight
        version. An optimiser step or ``load_state_dict`` bumps a tensor's version, and
        replacing a tensor changes its storage, so either invalidates the value. With
        gradients on, nothing is cached (a cached graph would be freed by the first backward).
        """
        if torch.is_grad_enabled():
            return compute()
        key = tuple((tensor._version, tensor.data_ptr()) for tensor in inputs)
        caches: dict[str, tuple[tuple[tuple[int, int], ...], torch.Tensor]] = self.__dict__.setdefault(
            "_inference_caches", {})
        cached = caches.get(name)
        if cached is None or cached[0] != key:
            cached = (key, compute())
            caches[name] = cached
        return cached[1]


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def config_from_dict(config_class: type[ModelConfig], values: dict[str, Any]) -> ModelConfig:
    """Builds a model config, rejecting unknown keys with the list of known ones."""
    known = {config_field.name: config_field for config_field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"model: unknown option(s) {', '.join(unknown)} for {config_class.__name__}; "
            f"known: {', '.join(sorted(known))}"
        )
    converted: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(config_class, key, None)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        converted[key] = value
    config = config_class(**converted)
    config.validate()
    return config
