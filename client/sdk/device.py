"""The on-device recommender an app embeds: feedback in, recommendations out, nothing sent anywhere.

    device = Device.open("user.store", KeySource.from_passphrase(passphrase))
    device.load_bundle("final-model")          # the server's global model, verified
    device.record("item-42", "purchase")
    device.recommend(k=10)                     # [Recommendation(item="item-7", score=3.1), ...]

Everything the device learns stays in its encrypted store: the feedback log, the
private parameters (the user embedding) fitted to it, and what federated training
keeps between rounds. Only a global model comes in; nothing goes out from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.sdk.feedback import FEEDBACK_KINDS, FeedbackWeights
from client.sdk.store import EncryptedStore, KeySource
from recsys_core.bundle import BundleError, ModelBundle, read_bundle
from recsys_core.data.interactions import IdMap, InteractionLog, ItemFeatures
from recsys_core.errors import FedrecError
from recsys_core.models import CatalogInfo, Recommender, build_model
from recsys_core.training import make_optimizer, run_local_epochs, seeded

PRIVATE_PREFIX = "private/"
#: Keys of what federated training keeps on the device (:class:`recsys_core.federated.state.DeviceState`).
TRAINING_STATE_PREFIXES = (PRIVATE_PREFIX, "optimizer/", "privacy/")
FEEDBACK_KEYS = ("feedback/items", "feedback/kinds", "feedback/values", "feedback/timestamps")
#: How many positives the private parameters were last fitted to (refit when there are more).
FITTED_KEY = "meta/fitted-positives"


class DeviceError(FedrecError):
    """A call the device cannot serve yet (no model loaded) or with bad arguments."""


@dataclass(frozen=True)
class Recommendation:
    item: str
    score: float


@dataclass(frozen=True)
class PersonalisationConfig:
    """How the device fits its private parameters to its own feedback."""

    epochs: int = 10
    learning_rate: float = 0.05
    batch_size: int = 32


class Device:
    """One user's device: an encrypted store, the loaded global model and the user's private parameters."""

    def __init__(self, store: EncryptedStore, weights: FeedbackWeights | None = None, seed: int = 0,
                 personalisation: PersonalisationConfig | None = None,
                 model_overrides: Mapping[str, object] | None = None,
                 trusted_bundle_keys: Sequence[bytes] | None = None) -> None:
        """``model_overrides`` replace options of every loaded bundle's model, for on-device
        inference settings such as ``{"ranking_dtype": "float16"}`` (Mult-DAE/VAE); one that
        changes a weight's shape makes :meth:`load_bundle` refuse the bundle.

        ``trusted_bundle_keys``: the deployment's bundle-signing public keys (raw 32 bytes, as
        :func:`~recsys_core.bundle_signing.load_public_key` reads ``bundle-signing.pub``) the app pins;
        then :meth:`load_bundle` refuses a bundle not signed by one of them. An app in production
        should always pin one."""
        self.store = store
        self.trusted_bundle_keys = None if trusted_bundle_keys is None else list(trusted_bundle_keys)
        self.model_overrides = dict(model_overrides or {})
        self.weights = weights or FeedbackWeights()
        self.personalisation = personalisation or PersonalisationConfig()
        self.seed = seed
        self._arrays = store.load() if store.exists() else {}
        self._bundle: ModelBundle | None = None
        self._model: Recommender | None = None
        self._item_index: dict[str, int] = {}

    @classmethod
    def open(cls, path: str | Path, key_source: KeySource, identity: str = "", min_counter: int = 0,
             **options: object) -> Device:
        """Opens (or, on first use, creates) the device's store at ``path``.

        ``identity`` (whose store: a user or install id) and ``min_counter`` (the store's write counter the
        app last kept in its keystore) let the store refuse another user's file or an older copy of its own
        (:class:`~client.sdk.store.EncryptedStore`).
        """
        return cls(EncryptedStore(path, key_source, identity, min_counter), **options)  # type: ignore[arg-type]

    # -- the global model ----------------------------------------------------------------------
    def load_bundle(self, folder: str | Path) -> None:
        """Loads a global model bundle; a damaged or mismatched one raises and the previous one stays."""
        bundle = read_bundle(folder, self.trusted_bundle_keys)
        if "item_ids" not in bundle.catalog or len(bundle.catalog["item_ids"]) != bundle.n_items:
            raise BundleError(f"{folder}: the bundle has no item ids for its {bundle.n_items} items; a device "
                              "cannot name what it recommends")
        features = bundle.catalog.get("item_features")
        with seeded(self.seed):
            catalog = CatalogInfo(1, bundle.n_items, features, bundle.catalog.get("item_popularity"))
            model = build_model(bundle.model, catalog,
                                {**bundle.options, **self.model_overrides})
        tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in bundle.shared_parameters.items()}
        missing = set(model.shared_state()) - set(tensors)
        if missing:
            raise BundleError(f"{folder}: the bundle lacks parameters {sorted(missing)[:3]} of model {bundle.model}")
        private = {name.removeprefix(PRIVATE_PREFIX): torch.from_numpy(value) for name, value in self._arrays.items()
                   if name.startswith(PRIVATE_PREFIX)}
        own = model.private_state()
        if private and all(name in own and own[name].shape == value.shape for name, value in private.items()):
            tensors.update(private)  # the user's own parameters survive a new global model
        try:
            model.load_state_dict(tensors, strict=False)
        except RuntimeError as error:  # a weight of another shape than the model's options give
            raise BundleError(f"{folder}: the bundle's parameters do not fit model {bundle.model} with options "
                              f"{ {**bundle.options, **self.model_overrides} }: {str(error).splitlines()[-1].strip()}"
                              ) from error
        model.eval()
        self._bundle, self._model = bundle, model
        self._item_index = {item: index for index, item in enumerate(bundle.catalog["item_ids"].tolist())}

    # -- feedback --------------------------------------------------------------------------------
    def record(self, item: object, kind: str, value: float | None = None, timestamp: float | None = None) -> None:
        """Records one piece of feedback and saves it (encrypted) before returning."""
        self.weights.weight(kind, value)  # validates kind and value
        items, kinds, values, stamps = self._feedback()
        self._arrays.update({
            "feedback/items": np.append(items, str(item)),
            "feedback/kinds": np.append(kinds, np.int8(FEEDBACK_KINDS.index(kind))).astype(np.int8),
            "feedback/values": np.append(values, np.nan if value is None else float(value)),
            "feedback/timestamps": np.append(stamps, time.time() if timestamp is None else float(timestamp)),
        })
        self.store.save(self._arrays)

    def _feedback(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if "feedback/items" not in self._arrays:
            return np.array([], dtype=str), np.array([], dtype=np.int8), np.array([]), np.array([])
        items, kinds, values, stamps = (self._arrays[key] for key in FEEDBACK_KEYS)
        return items, kinds, values, stamps

    def item_weights(self) -> dict[str, float]:
        """Each item's summed feedback weight."""
        totals: dict[str, float] = {}
        for item, kind, value in zip(*self._feedback()[:3]):
            weight = self.weights.weight(FEEDBACK_KINDS[int(kind)], None if np.isnan(value) else float(value))
            totals[str(item)] = totals.get(str(item), 0.0) + weight
        return totals

    def positives(self) -> list[str]:
        """Items the user likes, in the order they became positives (the device's training data)."""
        items, kinds, values, stamps = self._feedback()
        running: dict[str, float] = {}
        became: dict[str, float] = {}
        for index in np.argsort(stamps, kind="stable"):
            item = str(items[index])
            value = None if np.isnan(values[index]) else float(values[index])
            running[item] = running.get(item, 0.0) + self.weights.weight(FEEDBACK_KINDS[int(kinds[index])], value)
            if running[item] >= self.weights.positive_threshold and item not in became:
                became[item] = float(stamps[index])
        return [item for item in sorted(became, key=lambda name: became[name]) if running[item] > 0]

    def training_log(self) -> InteractionLog:
        """The user's positives among the loaded catalogue's items, as a one-user log."""
        model_items = [self._item_index[item] for item in self.positives() if item in self._item_index]
        n_items = len(self._item_index)
        return InteractionLog.from_arrays(np.zeros(len(model_items), np.int64), np.array(model_items, np.int64),
                                          np.arange(len(model_items)), None, IdMap(np.array([0])),
                                          IdMap(np.arange(n_items)), item_features=self._item_features())

    def _item_features(self) -> ItemFeatures | None:
        """The bundle's item features, for content-based and hybrid models."""
        catalog = self._bundle.catalog if self._bundle is not None else {}
        if "item_features" not in catalog:
            return None
        values = np.asarray(catalog["item_features"], dtype=np.float32)
        names = catalog.get("item_feature_names")
        labels = tuple(str(name) for name in names) if names is not None else tuple(
            f"feature-{index}" for index in range(values.shape[1]))
        return ItemFeatures(values, labels)

    # -- federated training's state -------------------------------------------------------------
    def training_state(self) -> dict[str, np.ndarray]:
        """What federated training keeps here between rounds: private parameters, optimiser state, accountant."""
        return {key: value for key, value in self._arrays.items() if key.startswith(TRAINING_STATE_PREFIXES)}

    def save_training_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Replaces the training state (after a federated round) and saves the store; feedback is kept."""
        self._arrays = {key: value for key, value in self._arrays.items()
                        if not key.startswith(TRAINING_STATE_PREFIXES) and key != FITTED_KEY}
        self._arrays.update(arrays)
        if self._model is not None:
            private = {name.removeprefix(PRIVATE_PREFIX): torch.from_numpy(np.asarray(value))
                       for name, value in arrays.items() if name.startswith(PRIVATE_PREFIX)}
            self._model.load_state_dict(private, strict=False)
        self.store.save(self._arrays)

    # -- learning --------------------------------------------------------------------------------
    def personalise(self) -> float | None:
        """Fits the private parameters to the user's feedback, on the device; returns the last epoch's loss.

        Only the user's own parameters change (the global model stays as loaded). None
        when there is nothing to fit: no positives yet, or a model without private
        parameters (sequence models read the history directly).
        """
        model = self._require_model()
        log = self.training_log()
        private = [parameter for name, parameter in model.named_parameters() if model.is_private(name)]
        if log.n_interactions == 0 or not private or not model.trains_with_gradients:
            return None
        settings = self.personalisation
        optimizer = make_optimizer(private, "adam", settings.learning_rate, 0.0)
        with seeded(self.seed):
            model.train()
            losses = run_local_epochs(model, log, [optimizer], settings.epochs, settings.batch_size,
                                      np.random.default_rng(self.seed))
            model.eval()
        self._arrays.update({PRIVATE_PREFIX + name: value.detach().numpy().copy()
                             for name, value in model.private_state().items()})
        self._arrays[FITTED_KEY] = np.array([log.n_interactions])
        self.store.save(self._arrays)
        return float(losses[-1])

    # -- recommending ----------------------------------------------------------------------------
    def recommend(self, k: int = 10, exclude_seen: bool = True, candidates: Iterable[object] | None = None,
                  filter: Callable[[str], bool] | None = None) -> list[Recommendation]:
        """The top ``k`` items for this user, scored on the device.

        A user without positives gets the catalogue's most popular items (cold start).
        New positives since the last fit are learnt first (:meth:`personalise`).
        ``candidates`` limits the ranking to those items; ``filter`` drops items it
        returns False for; ``exclude_seen`` drops items the user already liked or skipped.
        """
        if k < 1:
            raise DeviceError(f"k must be at least 1, got {k}")
        model = self._require_model()
        log = self.training_log()
        if log.n_interactions == 0:
            scores = self._popularity()
        else:
            fitted = int(self._arrays.get(FITTED_KEY, np.array([0]))[0])
            if fitted != log.n_interactions:
                self.personalise()
            with torch.no_grad():
                scores = model.score(np.array([0]), log)[0].to(torch.float64).numpy()
        allowed = np.ones(len(scores), dtype=bool)
        if candidates is not None:
            allowed[:] = False
            allowed[[self._item_index[str(item)] for item in candidates if str(item) in self._item_index]] = True
        if exclude_seen:
            allowed[self._seen_indices()] = False
        item_ids = self._bundle.catalog["item_ids"] if self._bundle else np.array([])
        if filter is not None:
            allowed &= np.array([filter(str(item)) for item in item_ids], dtype=bool)
        eligible = np.flatnonzero(allowed)
        if len(eligible) > k:  # a partial sort: only the top k are ordered
            eligible = eligible[np.argpartition(-scores[eligible], k - 1)[:k]]
        order = eligible[np.lexsort((eligible, -scores[eligible]))][:k]
        return [Recommendation(str(item_ids[index]), float(scores[index])) for index in order]

    def _seen_indices(self) -> list[int]:
        """Catalogue indices of items with any non-zero feedback weight (seen, liked or skipped)."""
        return [self._item_index[item] for item, weight in self.item_weights().items()
                if weight != 0 and item in self._item_index]

    def _popularity(self) -> np.ndarray:
        assert self._bundle is not None
        popularity = self._bundle.catalog.get("item_popularity")
        if popularity is None:
            return np.zeros(self._bundle.n_items)
        return np.asarray(popularity, dtype=np.float64)

    def _require_model(self) -> Recommender:
        if self._model is None:
            raise DeviceError("no global model loaded: call load_bundle(folder) with the server's model bundle")
        return self._model
