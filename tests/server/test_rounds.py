"""How the server sorts a round's replies: usable, declined, rejected as malformed or hostile, failed, missing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from server.rounds import sort_replies

CURRENT = {"item.weight": np.zeros((4, 2), dtype=np.float32)}


def reply(node: int, arrays: dict | None = None, metrics: dict | None = None, error: str | None = None):
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord({name: Array(value) for name, value in arrays.items()})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    return SimpleNamespace(content=content, metadata=SimpleNamespace(src_node_id=node),
                           has_error=lambda: error is not None, error=SimpleNamespace(reason=error))


GOOD_METRICS = {"partition-id": 0, "num-examples": 10, "train-loss": 0.5, "declined": 0}


def test_each_bad_reply_is_set_aside_with_a_reason_naming_it_and_the_rest_are_used() -> None:
    node_to_partition = {100 + p: p for p in range(8)}
    replies = [
        reply(100, CURRENT, GOOD_METRICS),
        reply(101, {"item.weight": np.zeros((5, 2), dtype=np.float32)}, GOOD_METRICS),  # wrong shape
        reply(102, {"item.weight": np.full((4, 2), np.nan, dtype=np.float32)}, GOOD_METRICS),  # NaN
        reply(103, CURRENT, {**GOOD_METRICS, "num-examples": -3}),  # negative weight
        reply(104, CURRENT, {"partition-id": 4, "train-loss": 0.1}),  # no count
        reply(105, CURRENT, {**GOOD_METRICS, "declined": 1}),  # out of privacy budget
        reply(106, error="Traceback ...\nValueError: boom"),  # the client raised
        # partition 7 never replied
    ]
    usable, exchange = sort_replies(replies, list(range(8)), node_to_partition, CURRENT)
    assert [partition for partition, _, _ in usable] == [0]
    assert exchange.declined == [5]
    reasons = {failure.partition: failure.reason for failure in exchange.failures}
    assert reasons[1] == "update rejected: array 'item.weight' has shape (5, 2), expected (4, 2)"
    assert "holds NaN" in reasons[2]
    assert "'num-examples' is negative" in reasons[3]
    assert "'num-examples' is missing" in reasons[4]
    assert reasons[6] == "ValueError: boom"
    assert reasons[7] == "no reply before the round timeout"
    assert 0 not in reasons and 5 not in reasons
    # Rejected updates still left their devices: the privacy ledger counts them.
    assert sorted(exchange.joined) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("metrics", "words"), [
    ({**GOOD_METRICS, "num-examples": float("inf")}, "non-negative whole number"),
    ({**GOOD_METRICS, "num-examples": 2.5}, "non-negative whole number"),
    ({**GOOD_METRICS, "train-loss": float("inf")}, "'train-loss' is infinite"),
    ({**GOOD_METRICS, "declined": 7}, "must be 0 or 1"),
    ({**GOOD_METRICS, "extra": 1.0}, "unexpected metric(s) ['extra']"),
    ({"num-examples": 10, "train-loss": 0.5}, "'partition-id' is missing"),
])
def test_a_hostile_reply_is_rejected_alone_with_the_reason(metrics: dict, words: str) -> None:
    usable, exchange = sort_replies([reply(100, CURRENT, GOOD_METRICS), reply(101, CURRENT, metrics)], [0, 1],
                                    {100: 0, 101: 1}, CURRENT)
    assert [partition for partition, _, _ in usable] == [0]
    assert [failure.partition for failure in exchange.failures] == [1]
    assert words in exchange.failures[0].reason
