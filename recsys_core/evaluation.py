"""Ranking evaluation under two protocols in one pass.

* **full** (primary): each held-out item is ranked against every item in the
  catalogue except those the user had already seen (train, plus validation
  when testing).
* **sampled** (for comparison with papers): each held-out item is ranked against
  ``sampled_negatives`` random items the user never interacted with, drawn with a
  per-user seed so a federated client draws exactly what the central evaluator draws.

Ranks count ties pessimistically: an item scores a hit only if no competitor
scores at least as high, so a constant model cannot look good.

Per-user metric values are *summed* into :class:`MetricSums`; a federated client
sends its sums and the server adds them, giving the same means as one central pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from recsys_core.data.interactions import IdMap, InteractionLog
from recsys_core.data.sampling import SeenItems, sample_unseen_items
from recsys_core.errors import FedrecError
from recsys_core.metrics import EvaluationConfig, MetricSums, metric_names

ScoreFunction = Callable[[np.ndarray], torch.Tensor]
"""Maps a batch of user ids to a ``[batch, n_items]`` score tensor."""

def ideal_dcg(num_relevant: torch.Tensor, cutoff: int) -> torch.Tensor:
    """DCG of a perfect ranking with ``num_relevant`` relevant items, cut at ``cutoff``."""
    discounts = 1.0 / torch.log2(torch.arange(cutoff, dtype=torch.float64) + 2.0)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), discounts.cumsum(0)])
    return cumulative[num_relevant.clamp(max=cutoff)]


def metrics_from_ranks(
    ranks: torch.Tensor, relevant_mask: torch.Tensor, cutoffs: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """Per-user HR, NDCG, Recall and MRR at each cut-off from 0-based ranks of relevant items.

    ``ranks`` is ``[users, max_relevant]`` with padding slots marked ``False`` in
    ``relevant_mask``; every user needs at least one relevant item (NDCG and Recall
    are undefined without one). Returns tensors of shape ``[users]`` keyed ``"ndcg@10"`` etc.
    """
    _require_a_target_per_user(relevant_mask)
    num_relevant = relevant_mask.sum(dim=1)
    ranks64 = ranks.to(torch.float64)
    result: dict[str, torch.Tensor] = {}
    for cutoff in cutoffs:
        hit = relevant_mask & (ranks < cutoff)
        gains = torch.where(hit, 1.0 / torch.log2(ranks64 + 2.0), torch.zeros_like(ranks64))
        best_rank = torch.where(hit, ranks64, torch.full_like(ranks64, float("inf"))).min(dim=1).values
        result[f"hr@{cutoff}"] = hit.any(dim=1).to(torch.float64)
        result[f"ndcg@{cutoff}"] = gains.sum(dim=1) / ideal_dcg(num_relevant, cutoff)
        result[f"recall@{cutoff}"] = hit.sum(dim=1).to(torch.float64) / num_relevant.clamp(min=1)
        result[f"mrr@{cutoff}"] = torch.where(
            torch.isfinite(best_rank), 1.0 / (best_rank + 1.0), torch.zeros_like(best_rank)
        )
    return result


def _require_a_target_per_user(relevant_mask: torch.Tensor) -> None:
    if not bool(relevant_mask.any(dim=1).all()):
        raise ValueError("every ranked user needs at least one held-out item; users without one are not evaluated")


def _padded_rows(log: InteractionLog, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Items of each user as a ``[users, max_len]`` tensor plus a validity mask."""
    starts = log.user_offsets[users]
    lengths = log.user_offsets[users + 1] - starts
    width = max(int(lengths.max(initial=0)), 1)
    column = np.arange(width)
    valid = column[None, :] < lengths[:, None]
    index = np.where(valid, starts[:, None] + column[None, :], 0)
    items = np.where(valid, log.item_ids[index] if len(log.item_ids) else 0, 0)
    return torch.from_numpy(items), torch.from_numpy(valid)


def _full_ranking(
    scores: torch.Tensor,
    history_items: torch.Tensor,
    history_valid: torch.Tensor,
    target_items: torch.Tensor,
    target_valid: torch.Tensor,
    cutoffs: tuple[int, ...],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    masked = scores.clone()
    rows = torch.arange(len(scores)).unsqueeze(1).expand_as(history_items)
    masked[rows[history_valid], history_items[history_valid]] = float("-inf")
    # Held-out items stay rankable even if the user saw them before (repeat consumption).
    target_scores = scores.gather(1, target_items)
    target_rows = torch.arange(len(scores)).unsqueeze(1).expand_as(target_items)
    masked[target_rows[target_valid], target_items[target_valid]] = target_scores[target_valid]
    ordered = torch.sort(masked, dim=1, descending=True).values
    # Items scoring >= the target, minus the target itself: ties count against the model.
    ranks = torch.searchsorted(-ordered, -target_scores, right=True) - 1
    # A catalogue smaller than the largest cutoff ranks all of it (HR@10 over 4 items counts every rank).
    top_items = torch.topk(masked, k=min(max(cutoffs), masked.shape[1]), dim=1).indices
    return metrics_from_ranks(ranks, target_valid, cutoffs), top_items


def _sampled_ranking(
    scores: torch.Tensor,
    negatives: torch.Tensor,
    target_items: torch.Tensor,
    target_valid: torch.Tensor,
    cutoffs: tuple[int, ...],
) -> dict[str, torch.Tensor]:
    """Each held-out item is its own trial against the user's negatives; a user's value is the mean of its trials.

    ``target_items`` is ``[users, max_targets]``, padded where ``target_valid`` is
    ``False``: a pad slot is no trial, so it never enters a metric nor the mean.
    """
    _require_a_target_per_user(target_valid)
    negative_scores = scores.gather(1, negatives)  # [B, N]
    target_scores = scores.gather(1, target_items)  # [B, P]
    ranks = (negative_scores.unsqueeze(1) >= target_scores.unsqueeze(2)).sum(dim=2)  # [B, P]
    # One row per real trial (row-major, so each user's trials stay in column order), |R| = 1 each.
    trial_users = torch.arange(len(ranks)).unsqueeze(1).expand_as(ranks)[target_valid]
    trial_ranks = ranks[target_valid].unsqueeze(1)
    trials = metrics_from_ranks(trial_ranks, torch.ones_like(trial_ranks, dtype=torch.bool), cutoffs)
    num_targets = target_valid.sum(dim=1).to(torch.float64)
    return {
        key: torch.zeros(len(ranks), dtype=torch.float64).index_add_(0, trial_users, value) / num_targets
        for key, value in trials.items()
    }


def user_seed_key(original_id: object) -> int:
    """A stable non-negative integer for a user's original id (ints as they are, strings hashed)."""
    if isinstance(original_id, (int, np.integer)) and original_id >= 0:
        return int(original_id)
    digest = hashlib.sha256(str(original_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def sample_evaluation_negatives(
    users: np.ndarray, seen: SeenItems, count: int, seed: int, seed_keys: np.ndarray | None = None
) -> np.ndarray:
    """The sampled protocol's negatives for ``users`` (internal ids of ``seen``).

    Each user's draw is seeded by ``(seed, seed key)``; the key is the user's original
    id, so a device that numbers its one user 0 draws what the central evaluator draws.
    """
    keys = users if seed_keys is None else seed_keys
    rows = []
    for user, key in zip(users, keys):
        try:
            rows.append(sample_unseen_items(np.array([user]), count, seen,
                                            np.random.default_rng([seed, user_seed_key(key)]))[0])
        except ValueError:
            raise _every_item_seen(key, seen.n_items) from None
    return np.stack(rows) if rows else np.zeros((0, count), dtype=np.int64)


def require_an_unseen_item(seen: SeenItems, user_map: IdMap) -> None:
    """Refuses, before any training, a log in which some user has seen every item of the catalogue.

    Such a user has no negative: neither for training (NeuMF's sampled negatives) nor for
    the sampled protocol, which ranks each held-out item against unseen ones.
    """
    saturated = seen.users_with_every_item()
    if len(saturated):
        raise _every_item_seen(user_map.original_ids[saturated[0]], seen.n_items)


def _every_item_seen(user: object, n_items: int) -> FedrecError:
    return FedrecError(
        f"user {user} has interacted with all {n_items} items of the catalogue, so the sampled "
        "protocol has no unseen item to rank the held-out one against; the log is too small to "
        "evaluate: use one with more items than any user's history")


def evaluate_ranking(
    score_users: ScoreFunction,
    targets: InteractionLog,
    history: InteractionLog,
    seen_for_negatives: SeenItems,
    config: EvaluationConfig = EvaluationConfig(),
    per_user: dict[int, dict[str, float]] | None = None,
) -> MetricSums:
    """Ranks every user's held-out items under both protocols and sums the metrics.

    ``targets`` holds the held-out rows, ``history`` what each user had seen before
    (excluded from the full ranking), and ``seen_for_negatives`` every pair the
    user ever had (never drawn as a sampled negative). ``per_user``, when given,
    receives each evaluated user's metrics keyed by internal user id, for paired
    comparisons of models on the same users.
    """
    config.validate()
    users = np.flatnonzero(np.diff(targets.user_offsets) > 0)
    # Every metric present from the start: a device without a held-out user sends zero sums over zero users,
    # which the server adds like any other reply, rather than a reply without sums that it must reject.
    totals = MetricSums(sums=dict.fromkeys(metric_names(config), 0.0),
                        recommended_counts={k: np.zeros(targets.n_items, np.int64) for k in config.cutoffs})
    for start in range(0, len(users), config.batch_size):
        batch = users[start : start + config.batch_size]
        with torch.no_grad():
            scores = score_users(batch).detach().to(torch.float32)
        if scores.shape != (len(batch), targets.n_items):
            raise ValueError(f"score function returned shape {tuple(scores.shape)}, expected "
                             f"{(len(batch), targets.n_items)}")
        if bool(torch.isnan(scores).any()):
            # A NaN loses every comparison, so it would rank a held-out item first.
            raise FedrecError("the model scored NaN: its parameters are not finite (did training diverge? lower "
                              "the learning rate)")
        history_items, history_valid = _padded_rows(history, batch)
        if not config.exclude_history:
            history_valid = torch.zeros_like(history_valid)
        target_items, target_valid = _padded_rows(targets, batch)
        full, top_items = _full_ranking(scores, history_items, history_valid, target_items, target_valid,
                                        config.cutoffs)
        negatives = torch.from_numpy(
            sample_evaluation_negatives(batch, seen_for_negatives, config.sampled_negatives, config.seed,
                                        targets.user_map.original_ids[batch])
        )
        sampled = _sampled_ranking(scores, negatives, target_items, target_valid, config.cutoffs)
        for prefix, values in (("full", full), ("sampled", sampled)):
            for key, value in values.items():
                name = f"{prefix}/{key}"
                totals.sums[name] = totals.sums.get(name, 0.0) + float(value.sum())
                if per_user is not None:
                    for user, user_value in zip(batch.tolist(), value.tolist(), strict=True):
                        per_user.setdefault(user, {})[name] = user_value
        for cutoff in config.cutoffs:
            totals.recommended_counts[cutoff] += np.bincount(
                top_items[:, :cutoff].reshape(-1).numpy(), minlength=targets.n_items
            )
        totals.num_users += len(batch)
    return totals


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over the same evaluation units, with its standard error."""

    units: int
    mean_a: float
    mean_b: float
    mean_difference: float
    #: Standard error of the mean paired difference: std(a - b) / sqrt(units).
    paired_standard_error: float
    #: What the error would be if a and b were measured on different units (for contrast).
    unpaired_standard_error: float

    @property
    def z(self) -> float:
        """The difference in paired standard errors (inf when every unit differs alike)."""
        if self.paired_standard_error == 0:
            return 0.0 if self.mean_difference == 0 else float(np.sign(self.mean_difference) * np.inf)
        return self.mean_difference / self.paired_standard_error


def paired_difference(a: np.ndarray, b: np.ndarray) -> PairedDifference:
    """Compares two runs unit by unit (the same users or devices, in the same order).

    Two models tested on the same devices share each device's difficulty, which the paired
    error takes out. How much that helps depends on the data: where the models hit
    different devices (Amazon Beauty, about one hit in 50-80 devices) the paired error is
    barely below the unpaired one, and both are reported.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"paired_difference needs two 1-d arrays of the same length >= 2, got {a.shape} and {b.shape}")
    units = a.size
    difference = a - b
    return PairedDifference(
        units=units, mean_a=float(a.mean()), mean_b=float(b.mean()), mean_difference=float(difference.mean()),
        paired_standard_error=float(difference.std(ddof=1) / np.sqrt(units)),
        unpaired_standard_error=float(np.sqrt(a.var(ddof=1) / units + b.var(ddof=1) / units)),
    )
