"""Canary interactions for the one-run privacy audit (Steinke, Nasr & Jagielski, 2023).

``m`` canaries are drawn before training: each is one interaction of a distinct user
with an item of its own, a new catalogue entry that no real user touches, so that
nothing but the canary itself can move that item. A fair coin decides, per canary,
whether it goes into the user's training data. The run records the coins; after
training the auditor scores every canary on the released model and guesses which
went in. How often the guesses can be right bounds epsilon from below.

Each canary is one interaction of one user, so it is one unit of privacy for local
(interaction-level) DP and lies inside one unit for user-level DP: a guarantee of
either kind covers it. Distinct users keep one canary per client.

The canary items are appended to the catalogue (with all-zero content features), so
every model, bundle and device sees the same catalogue. ``insert = False`` draws and
records the same coins but inserts nothing: the null control, whose lower bound
should be about 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys_core.data.interactions import IdMap, InteractionLog, ItemFeatures
from recsys_core.data.splits import DatasetSplit
from recsys_core.errors import ConfigError

#: The run directory's record of the canaries and their coins.
CANARIES_FILE = "canaries.json"
#: Mixed into the canary generator's seed so canaries never share draws with the run's other randomness.
_CANARY_STREAM = 0xCA1A


@dataclass(frozen=True)
class CanaryConfig:
    """How many canaries an audited run plants, and whether it really plants them."""

    #: Number of canaries ``m``; 0 plants none (an ordinary run).
    count: int = 0
    #: False: flip and record the coins but insert nothing (the null control).
    insert: bool = True
    seed: int = 0

    def validate(self) -> CanaryConfig:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ConfigError(f"data.canaries.count: must be a non-negative integer, got {self.count!r}")
        return self


@dataclass(frozen=True)
class CanaryPlan:
    """Which canaries exist and which went in; written to the run directory for the auditor."""

    users: np.ndarray  # int64 [m], internal user ids (distinct)
    items: np.ndarray  # int64 [m], internal ids of the canaries' own items
    included: np.ndarray  # bool [m], the coins
    inserted: bool  # False in the null control

    @property
    def count(self) -> int:
        return len(self.users)

    def to_dict(self, log: InteractionLog) -> dict[str, object]:
        """JSON form with original ids, so the record reads without the dataset's numbering."""
        return {"count": self.count, "inserted": self.inserted,
                "users": log.user_map.to_original(self.users).tolist(),
                "items": log.item_map.to_original(self.items).tolist(),
                "included": self.included.astype(bool).tolist()}


def plan_canaries(train: InteractionLog, config: CanaryConfig) -> CanaryPlan:
    """Draws ``config.count`` canaries over distinct users of ``train`` and flips their coins."""
    config.validate()
    candidates = np.flatnonzero(np.diff(train.user_offsets) > 0)
    if config.count > len(candidates):
        raise ConfigError(f"data.canaries.count: {config.count} canaries need as many distinct users, but the "
                          f"training data has {len(candidates)}; plant at most {len(candidates)}")
    generator = np.random.default_rng([config.seed, _CANARY_STREAM])
    users = np.sort(generator.choice(candidates, size=config.count, replace=False)).astype(np.int64)
    included = generator.random(config.count) < 0.5
    items = np.arange(train.n_items, train.n_items + config.count, dtype=np.int64)
    return CanaryPlan(users, items, included, config.insert)


def insert_canaries(split: DatasetSplit, config: CanaryConfig) -> tuple[DatasetSplit, CanaryPlan | None]:
    """The split with the canary items in its catalogue and the included canaries in ``train``.

    Validation and test rows are untouched (only their catalogue grows). A canary's
    timestamp is its user's last training timestamp, and it sorts after that row, so
    for sequence models it is the user's most recent training interaction.
    """
    if config.count == 0:
        return split, None
    plan = plan_canaries(split.train, config)
    item_map = _grown_item_map(split.train.item_map, plan.count)
    train = split.train
    planted = plan.included & plan.inserted
    last_rows = train.user_offsets[plan.users[planted] + 1] - 1
    ratings = _with_planted(train.ratings, int(planted.sum()))
    # A canary weighs as much as the heaviest real row: the strongest signal, so the
    # audit's lower bound errs towards detecting it.
    weights = _with_planted(train.weights, int(planted.sum()))

    def grown(log: InteractionLog, extra_users: np.ndarray, extra_items: np.ndarray, extra_times: np.ndarray,
              extra_ratings: np.ndarray | None, extra_weights: np.ndarray | None) -> InteractionLog:
        features = log.item_features
        if features is not None:
            features = ItemFeatures(np.vstack([features.values, np.zeros((plan.count, features.values.shape[1]),
                                                                         dtype=features.values.dtype)]),
                                    features.names)
        titles = log.item_titles
        if titles is not None:
            titles = np.concatenate([titles, np.array(["(audit canary)"] * plan.count, dtype=titles.dtype)])
        return InteractionLog.from_arrays(
            np.concatenate([log.user_ids, extra_users]), np.concatenate([log.item_ids, extra_items]),
            np.concatenate([log.timestamps, extra_times]), extra_ratings, log.user_map, item_map, log.name,
            features, titles, extra_weights)

    empty = np.zeros(0, dtype=np.int64)
    new_train = grown(train, plan.users[planted], plan.items[planted], train.timestamps[last_rows], ratings,
                      weights)
    valid = grown(split.valid, empty, empty, empty, split.valid.ratings, split.valid.weights)
    test = grown(split.test, empty, empty, empty, split.test.ratings, split.test.weights)
    return DatasetSplit(new_train, valid, test), plan


def _grown_item_map(item_map: IdMap, count: int) -> IdMap:
    """The map with ``count`` canary items appended, with ids of the same kind as the dataset's."""
    originals = item_map.original_ids
    if np.issubdtype(originals.dtype, np.integer):
        start = int(originals.max(initial=0)) + 1
        extra = np.arange(start, start + count, dtype=originals.dtype)
    else:
        extra = np.array([f"audit-canary-{index:05d}" for index in range(count)], dtype=object)
        originals = originals.astype(object)
    return IdMap(np.concatenate([originals, extra]))


def without_canaries(log: InteractionLog, plan: CanaryPlan) -> InteractionLog:
    """``log`` without any canary row: what the auditor knows of the training data."""
    return log.select(~np.isin(log.item_ids, plan.items))


def _with_planted(values: np.ndarray | None, planted: int) -> np.ndarray | None:
    """A per-row column (ratings or weights) grown by ``planted`` canary rows at its maximum."""
    if values is None:
        return None
    return np.concatenate([values, np.full(planted, values.max(initial=1.0), dtype=values.dtype)])
