"""The model zoo: one model per file, all on the :class:`Recommender` interface."""

from __future__ import annotations

import logging
from typing import Any

from recsys_core.data.interactions import InteractionLog
from recsys_core.errors import ConfigError
from recsys_core.models.base import CatalogInfo, ModelConfig, Recommender, config_from_dict
from recsys_core.models.caser import Caser
from recsys_core.models.content import ContentBased
from recsys_core.models.gru4rec import GRU4Rec
from recsys_core.models.hybrid import Hybrid
from recsys_core.models.irgan import IRGAN
from recsys_core.models.item_knn import ItemKNN
from recsys_core.models.mult_dae import MultDAE
from recsys_core.models.mult_vae import MultVAE
from recsys_core.models.neumf import NeuMF
from recsys_core.models.popularity import Popularity
from recsys_core.models.sasrec import SASRec

MODELS: dict[str, type[Recommender]] = {
    model.name: model
    for model in (Popularity, ItemKNN, NeuMF, SASRec, MultDAE, MultVAE, Caser, GRU4Rec, IRGAN, ContentBased, Hybrid)
}


def model_class(name: str) -> type[Recommender]:
    """The model class registered as ``name``; unknown names list the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, catalog: CatalogInfo, options: dict[str, Any] | None = None) -> Recommender:
    """Builds model ``name`` sized for ``catalog`` with hyper-parameter ``options``.

    Parameter initialisation draws from torch's generator: seed it first
    (``recsys_core.training.seeded``) for reproducible weights.
    """
    cls = model_class(name)
    return cls(catalog, config_from_dict(cls.config_class, options or {}))


def warn_if_weights_ignored(name: str, log: InteractionLog) -> None:
    """One warning on the ``fedrec.data`` logger when ``log`` has interaction weights that model ``name`` ignores."""
    if log.weights is None or model_class(name).uses_interaction_weights:
        return
    readers = ", ".join(sorted(model for model, cls in MODELS.items() if cls.uses_interaction_weights))
    logging.getLogger("fedrec.data").warning(
        "%s ignores the interaction weights of %s (data.columns.weight) and counts every interaction once; "
        "%s weigh interactions by them. Set data.preprocessing.weight_transform = \"ignore\" to silence this, "
        "or data.preprocessing.min_weight to keep only rows with enough weight",
        name, log.name, readers)


__all__ = ["MODELS", "CatalogInfo", "ModelConfig", "Recommender", "build_model", "model_class",
           "warn_if_weights_ignored"]
