"""The message format both sides agree on: record names, config keys and the typed replies.

A device's reply travels as a Flower ``MetricRecord`` (numbers) and ``ConfigRecord``
(the accountant state); :class:`TrainReply` and :class:`EvaluateReply` are the only
code that writes or reads those keys. ``from_metrics`` is the server's edge: whatever
a device sent, it returns a typed reply or raises :class:`MalformedReplyError` saying
what is wrong, so nothing past it handles a bare string key or an unchecked number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_core.errors import FedrecError
from recsys_core.metrics import MetricSums
from recsys_core.privacy.accountant import PrivacyAccountant

PARAMETERS_RECORD = "arrays"
CONFIG_RECORD = "config"
METRICS_RECORD = "metrics"

CONFIG_KEY = "fedrec-config"
ROUND_KEY = "server-round"
EVALUATION_PART_KEY = "evaluation-part"
#: Where a device keeps its durable state is the device's own setting, never the server's: a
#: SuperNode's node config names the folder; a simulation launcher sets this environment variable
#: for the simulated devices it starts (``fedrec simulate``: ``RUN_DIR/devices``).
DEVICE_STATE_DIR_NODE_KEY = "state-dir"
DEVICE_STATE_DIR_ENV = "FEDREC_DEVICE_STATE_DIR"
#: A SuperNode's certified identity (``fedrec deploy certs`` writes ``supernode-N.identity``) and the
#: device authority it pins (``device-authority.pub``): node config keys, the device's own settings.
IDENTITY_PATH_NODE_KEY = "identity-path"
DEVICE_AUTHORITY_NODE_KEY = "device-authority"

PARTITION_KEY = "partition-id"
DECLINED_KEY = "declined"
NUM_EXAMPLES_KEY = "num-examples"
TRAIN_LOSS_KEY = "train-loss"
EPSILON_KEY = "privacy-epsilon"
SUM_PREFIX = "sum:"
USERS_KEY = "num-users"
#: A device under local DP sends its accountant's state (JSON, ``PrivacyAccountant.to_dict``) for the ledger.
PRIVACY_ACCOUNTANT_KEY = "privacy-accountant"

#: Secure aggregation: the protocol's arrays (``recsys_core.secure_aggregation.wire``) and its settings.
SECURE_ARRAYS_RECORD = "secure-aggregation"
SECURE_CONFIG_RECORD = "secure-aggregation-config"
#: A device's long-term X25519 public key (bytes), registered when the server discovers it.
PUBLIC_KEY_KEY = "public-key"
#: The message type of the unmasking step (``ClientApp.query("unmask")``).
UNMASK_MESSAGE_TYPE = "query.unmask"


#: What Flower's records hold (their constructors take these exact value types).
MetricValues = dict[str, int | float | list[int] | list[float]]
ConfigValues = dict[str, int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes]
                     | list[bool]]


class MalformedReplyError(FedrecError):
    """A device's reply does not follow the wire format; the message says which key and why."""


def _number(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedReplyError(f"metric {key!r} is missing or not a number")
    return float(value)


def _count(metrics: Mapping[str, Any], key: str) -> int:
    value = _number(metrics, key)
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise MalformedReplyError(f"metric {key!r} must be a non-negative whole number, got {metrics[key]}")
    return int(value)


def _check_keys(metrics: Mapping[str, Any], allowed: set[str]) -> None:
    unexpected = sorted(key for key in metrics if key not in allowed and not key.startswith(SUM_PREFIX))
    if unexpected:
        raise MalformedReplyError(f"unexpected metric(s) {unexpected[:3]}")


def reported_partition(metrics: Mapping[str, Any]) -> int:
    """The partition a node says it holds, in its reply to the server's discovery query."""
    _check_keys(metrics, {PARTITION_KEY})
    return _count(metrics, PARTITION_KEY)


@dataclass(frozen=True)
class TrainReply:
    """What a device says about its training round, beside the arrays it sends.

    Under secure aggregation ``num_examples`` and ``train_loss`` travel inside the masked
    vector, not here, and are None. ``train_loss`` is NaN when the device reports no loss
    (under DP the exact loss is outside its guarantee). ``accountant`` is the device's
    cumulative local-DP accountant, for the privacy ledger.
    """

    partition_id: int
    declined: bool = False
    num_examples: int | None = None
    train_loss: float | None = None
    privacy_epsilon: float | None = None
    accountant: PrivacyAccountant | None = None

    def to_metrics(self) -> MetricValues:
        metrics: MetricValues = {PARTITION_KEY: self.partition_id, DECLINED_KEY: int(self.declined)}
        if self.num_examples is not None:
            metrics[NUM_EXAMPLES_KEY] = self.num_examples
        if self.train_loss is not None:
            metrics[TRAIN_LOSS_KEY] = self.train_loss
        if self.privacy_epsilon is not None:
            metrics[EPSILON_KEY] = self.privacy_epsilon
        return metrics

    def to_config(self) -> ConfigValues:
        if self.accountant is None:
            return {}
        return {PRIVACY_ACCOUNTANT_KEY: json.dumps(self.accountant.to_dict(), sort_keys=True)}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                     with_counts: bool = True, max_examples: int | None = None) -> TrainReply:
        """Parses and checks a device's training reply; ``with_counts``: the plain protocol's count and loss.

        ``max_examples`` is the public bound on one device's example count (the federation manifest's
        ``max_training_rows``): FedAvg weighs an update by its count, so an unbounded count would hand a
        device the whole aggregate.
        """
        _check_keys(metrics, {PARTITION_KEY, DECLINED_KEY, NUM_EXAMPLES_KEY, TRAIN_LOSS_KEY, EPSILON_KEY})
        declined = _count(metrics, DECLINED_KEY) if DECLINED_KEY in metrics else 0
        if declined > 1:
            raise MalformedReplyError(f"metric {DECLINED_KEY!r} must be 0 or 1, got {metrics[DECLINED_KEY]}")
        num_examples, train_loss = None, None
        if with_counts and not declined:
            if NUM_EXAMPLES_KEY in metrics and _number(metrics, NUM_EXAMPLES_KEY) < 0:
                raise MalformedReplyError(f"metric {NUM_EXAMPLES_KEY!r} is negative ({metrics[NUM_EXAMPLES_KEY]})")
            num_examples = _count(metrics, NUM_EXAMPLES_KEY)
            if num_examples == 0:
                raise MalformedReplyError(f"metric {NUM_EXAMPLES_KEY!r} is 0: an update trained on nothing")
            if max_examples is not None and num_examples > max_examples:
                raise MalformedReplyError(f"metric {NUM_EXAMPLES_KEY!r} = {num_examples} is above the federation's "
                                          f"bound of {max_examples} training rows per device")
            train_loss = _number(metrics, TRAIN_LOSS_KEY)
            if math.isinf(train_loss):
                raise MalformedReplyError(f"metric {TRAIN_LOSS_KEY!r} is infinite")
        epsilon = _number(metrics, EPSILON_KEY) if EPSILON_KEY in metrics else None
        accountant = None
        if config is not None and PRIVACY_ACCOUNTANT_KEY in config:
            try:
                accountant = PrivacyAccountant.from_dict(json.loads(str(config[PRIVACY_ACCOUNTANT_KEY])))
            except ValueError as error:
                raise MalformedReplyError(f"{PRIVACY_ACCOUNTANT_KEY}: {error}") from None
        return cls(_count(metrics, PARTITION_KEY), bool(declined), num_examples, train_loss, epsilon, accountant)


@dataclass(frozen=True)
class EvaluateReply:
    """A device's evaluation reply: metric *sums* over its users, which the server adds up.

    Under secure aggregation the sums travel inside the masked vector and ``sums`` is None.
    """

    partition_id: int
    sums: MetricSums | None = None

    def to_metrics(self) -> MetricValues:
        metrics: MetricValues = {PARTITION_KEY: self.partition_id}
        if self.sums is not None:
            metrics.update({SUM_PREFIX + name: value for name, value in self.sums.sums.items()})
            metrics[USERS_KEY] = self.sums.num_users
        return metrics

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], metric_names: list[str] | None = None,
                     max_users: int | None = None) -> EvaluateReply:
        """Parses and checks an evaluation reply; ``metric_names``: the sums the plain protocol must carry.

        Each metric of one user lies in [0, 1], so a device's sum lies in [0, its users], and its
        users are at most ``max_users`` (the federation manifest's public bound): a device cannot
        outweigh the others by claiming more users than any device holds.
        """
        _check_keys(metrics, {PARTITION_KEY, USERS_KEY})
        partition = _count(metrics, PARTITION_KEY)
        if metric_names is None:
            return cls(partition)
        users = _count(metrics, USERS_KEY)
        if max_users is not None and users > max_users:
            raise MalformedReplyError(f"metric {USERS_KEY!r} = {users} is above the federation's bound of "
                                      f"{max_users} users per device")
        names = {key.removeprefix(SUM_PREFIX) for key in metrics if key.startswith(SUM_PREFIX)}
        if names != set(metric_names):
            missing, extra = sorted(set(metric_names) - names), sorted(names - set(metric_names))
            raise MalformedReplyError(f"metric sums do not match the evaluation: missing {missing[:3]}, "
                                      f"unexpected {extra[:3]}")
        sums = {}
        for name in sorted(names):
            value = _number(metrics, SUM_PREFIX + name)
            if not 0 <= value <= users * (1 + 1e-9):
                raise MalformedReplyError(f"metric {SUM_PREFIX + name!r} = {value} is outside [0, {users}] "
                                          f"(the device's user count)")
            sums[name] = value
        return cls(partition, MetricSums(sums, users))


def update_problem(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> str | None:
    """Why a device's arrays cannot be aggregated with ``reference`` (the global model), or None.

    The server runs this on every reply before aggregating: a device that sends other
    arrays, other shapes or non-finite values is rejected alone and the round goes on.
    """
    missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
    if missing or extra:
        return f"arrays do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, expected in reference.items():
        value = arrays[name]
        if value.shape != expected.shape:
            return f"array {name!r} has shape {tuple(value.shape)}, expected {tuple(expected.shape)}"
        if not np.issubdtype(value.dtype, np.floating) and np.issubdtype(expected.dtype, np.floating):
            return f"array {name!r} has dtype {value.dtype}, expected floating point"
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            return f"array {name!r} holds NaN or infinite values"
    return None
