"""How the server sorts a round's replies: usable, declined, rejected as malformed or hostile, failed, missing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server.rounds import sort_replies

CURRENT = {"item.weight": np.zeros((4, 2), dtype=np.float32)}


def reply(node: int, arrays: dict | None = None, metrics: dict | None = None, error: str | None = None):
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord({name: Array(value) for name, value in arrays.items()})
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    return SimpleNamespace(content=content, metadata=SimpleNamespace(src_node_id=node, reply_to_message_id=""),
                           has_error=lambda: error is not None, error=SimpleNamespace(reason=error))


GOOD_METRICS = {"partition-id": 0, "num-examples": 10, "train-loss": 0.5, "declined": 0}


def test_each_bad_reply_is_set_aside_with_a_reason_naming_it_and_the_rest_are_used() -> None:
    node_to_partition = {100 + p: p for p in range(8)}
    def good(partition: int, **changes) -> dict:
        return {**GOOD_METRICS, "partition-id": partition, **changes}

    replies = [
        reply(100, CURRENT, good(0)),
        reply(101, {"item.weight": np.zeros((5, 2), dtype=np.float32)}, good(1)),  # wrong shape
        reply(102, {"item.weight": np.full((4, 2), np.nan, dtype=np.float32)}, good(2)),  # NaN
        reply(103, CURRENT, good(3, **{"num-examples": -3})),  # negative weight
        reply(104, CURRENT, {"partition-id": 4, "train-loss": 0.1}),  # no count
        reply(105, CURRENT, good(5, declined=1)),  # out of privacy budget
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


# -- the hostile-reply matrix: every harmful reply is set aside alone, and the model is the honest devices' --------

HONEST = 4
BOUND = 100  # the federation's public bound on one device's training rows


def honest_arrays(partition: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(partition)
    return {"item.weight": (CURRENT["item.weight"] + generator.normal(0, 0.1, (4, 2))).astype(np.float32)}


def honest_reply(partition: int):
    return reply(100 + partition, honest_arrays(partition), {**GOOD_METRICS, "partition-id": partition,
                                                              "num-examples": 10 + partition})


def with_records(**records):
    """A reply from the hostile node (partition HONEST) with the given records."""
    hostile = reply(100 + HONEST, honest_arrays(HONEST), {**GOOD_METRICS, "partition-id": HONEST})
    for name, record in records.items():
        if record is None:
            del hostile.content[name]
        else:
            hostile.content[name] = record
    return hostile


def with_metrics(**changes):
    metrics = {**GOOD_METRICS, "partition-id": HONEST, **changes}
    return reply(100 + HONEST, honest_arrays(HONEST), {k: v for k, v in metrics.items() if v is not None})


def with_arrays(arrays):
    return reply(100 + HONEST, arrays, {**GOOD_METRICS, "partition-id": HONEST})


def scaled(factor: float) -> dict[str, np.ndarray]:
    return {"item.weight": (honest_arrays(HONEST)["item.weight"] * factor).astype(np.float32)}


HOSTILE = {
    "no metrics record": lambda: with_records(metrics=None),
    "no arrays record": lambda: with_records(arrays=None),
    "a second ArrayRecord": lambda: with_records(extra=ArrayRecord({"x": Array(np.zeros(2))})),
    "a second MetricRecord": lambda: with_records(more=MetricRecord({"x": 1.0})),
    "garbage accountant": lambda: with_records(config=ConfigRecord({"privacy-accountant": "{not json"})),
    "no partition-id": lambda: with_metrics(**{"partition-id": None}),
    "another device's partition-id": lambda: with_metrics(**{"partition-id": 0}),
    "negative partition-id": lambda: with_metrics(**{"partition-id": -1}),
    "fractional partition-id": lambda: with_metrics(**{"partition-id": 1.5}),
    "no num-examples": lambda: with_metrics(**{"num-examples": None}),
    "zero num-examples": lambda: with_metrics(**{"num-examples": 0}),
    "negative num-examples": lambda: with_metrics(**{"num-examples": -3}),
    "infinite num-examples": lambda: with_metrics(**{"num-examples": float("inf")}),
    "NaN num-examples": lambda: with_metrics(**{"num-examples": float("nan")}),
    "num-examples 1e9": lambda: with_metrics(**{"num-examples": 1e9}),
    "fractional num-examples": lambda: with_metrics(**{"num-examples": 2.5}),
    "infinite train-loss": lambda: with_metrics(**{"train-loss": float("inf")}),
    "no train-loss": lambda: with_metrics(**{"train-loss": None}),
    "declined = 7": lambda: with_metrics(declined=7),
    "an extra metric": lambda: with_metrics(extra=1.0),
    "an array missing": lambda: with_arrays({}),
    "an extra array": lambda: with_arrays({**honest_arrays(HONEST), "bias": np.zeros(3, dtype=np.float32)}),
    "a wrong shape": lambda: with_arrays({"item.weight": np.zeros((5, 2), dtype=np.float32)}),
    "integer arrays": lambda: with_arrays({"item.weight": np.zeros((4, 2), dtype=np.int64)}),
    "NaN values": lambda: with_arrays({"item.weight": np.full((4, 2), np.nan, dtype=np.float32)}),
    "infinite values": lambda: with_arrays({"item.weight": np.full((4, 2), np.inf, dtype=np.float32)}),
    "update norm 1e6": lambda: with_arrays(scaled(1e6)),
    "values near float32's largest": lambda: with_arrays({"item.weight": np.full((4, 2), 3e38, dtype=np.float32)}),
    "a client error": lambda: reply(100 + HONEST, error="Traceback ...\nRuntimeError: hostile"),
}


def aggregate(replies, strategy: str) -> tuple[dict[str, np.ndarray], list]:
    """What the server does with a plain round's replies: sort, screen, sum, step (FederatedRun.plain_exchange)."""
    from recsys_core.federated.aggregation import apply_round, server_optimizer, sum_plain_updates
    from recsys_core.federated.config import FederatedConfig
    from recsys_core.federated.robust import screen_updates

    config = FederatedConfig.from_dict({"server": {"strategy": strategy, "devices_per_round": HONEST + 1},
                                        "private": False})
    partitions = list(range(HONEST + 1))
    usable, exchange = sort_replies(replies, partitions, {100 + p: p for p in partitions}, CURRENT, BOUND)
    kept, outlying = screen_updates(config, CURRENT, [(p, arrays, parsed.num_examples or 0, parsed.train_loss or 0.0)
                                                      for p, arrays, parsed in usable])
    round_sum = sum_plain_updates(config, CURRENT, [update[1:] for update in kept])
    result = apply_round(config, CURRENT, round_sum, server_optimizer(config), 1)
    assert result.status == "aggregated" and not result.fatal
    return result.arrays, exchange.failures + outlying


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedprox"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_reply_is_rejected_and_the_model_is_the_honest_devices_alone(case: str, strategy: str) -> None:
    honest = [honest_reply(p) for p in range(HONEST)]
    expected, _ = aggregate(honest, strategy)
    measured, failures = aggregate([*honest, HOSTILE[case]()], strategy)
    assert [failure.partition for failure in failures] == [HONEST]
    assert failures[0].reason, case
    for name, value in expected.items():
        assert np.all(np.isfinite(measured[name]))
        np.testing.assert_array_equal(measured[name], value, err_msg=case)


def test_the_hostile_matrix_covers_twenty_nine_kinds_of_reply() -> None:
    assert len(HOSTILE) == 29


# -- a device that goes away: counted once, held out, probed, back when it answers ----------------------------------

def test_an_error_the_superlink_wrote_for_a_dead_node_is_counted_once_on_its_partition() -> None:
    unavailable = reply(0, error="Error: Node Unavailable — The destination node failed to report a heartbeat")
    unavailable.metadata.reply_to_message_id = "message-to-1"
    usable, exchange = sort_replies([reply(100, CURRENT, GOOD_METRICS), unavailable], [0, 1], {100: 0, 101: 1},
                                    CURRENT, BOUND, {"message-to-0": 100, "message-to-1": 101})
    assert [partition for partition, _, _ in usable] == [0]
    assert [(failure.partition, failure.reason) for failure in exchange.failures] == [
        (1, "Error: Node Unavailable — The destination node failed to report a heartbeat")]


class FlakyGrid:
    """Four nodes (100 + partition); ``alive`` answer, the rest stay silent; ``listed`` is what the SuperLink lists."""

    def __init__(self) -> None:
        self.alive = {100, 101, 102, 103}
        self.listed = {100, 101, 102, 103}
        self.asked: list[int] = []

    def get_node_ids(self):
        return sorted(self.listed)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.asked.append(node)
            if node not in self.alive:
                continue
            answer = honest_reply(node - 100)
            if message.metadata.message_type == "query":
                answer = reply(node, metrics={"partition-id": node - 100})
                answer.content["config"] = ConfigRecord({})
            replies.append(answer)
        return replies


def flaky_run(tmp_path):
    from recsys_core.federated.config import FederatedConfig
    from recsys_core.federated.manifest import FederationManifest
    from server.rounds import FederatedRun
    from server.run_directory import RunDirectory

    config = FederatedConfig.from_dict({"server": {"devices_per_round": 4, "min_devices": 1}, "private": False})
    manifest = FederationManifest.from_bundle_catalog("test", {"item_ids": np.array(["a", "b", "c", "d"])}, 4, BOUND)
    run = FederatedRun(config, RunDirectory(tmp_path / "run"), manifest)
    run.grid = FlakyGrid()
    run.partitions = [0, 1, 2, 3]
    run.partition_to_node = {p: 100 + p for p in run.partitions}
    return run


def test_a_device_that_stops_answering_is_held_out_until_it_answers_a_probe(tmp_path, monkeypatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("_run_id", "_node_id", "_task_id"):  # Flower stamps these on every Message it builds
        monkeypatch.setattr(TaskIdentity, attribute, 1)
    run = flaky_run(tmp_path)
    grid = run.grid
    grid.alive.discard(103)  # the device died; the SuperLink still lists it
    exchange = run.training_exchange(CURRENT, run.sample(1, 4, 1), 1)
    assert [failure.partition for failure in exchange.failures] == [3]
    assert run.online_partitions() == [0, 1, 2]  # held out although listed
    grid.asked.clear()
    exchange = run.training_exchange(CURRENT, run.sample(2, 4, 1), 2)
    assert not exchange.failures and grid.asked.count(103) == 1  # only the probe went to it, unanswered
    assert run.online_partitions() == [0, 1, 2]
    grid.listed.discard(103)  # the SuperLink noticed: it is offline
    assert run.online_partitions() == [0, 1, 2] and run.offline == {3}
    grid.alive.add(103)
    grid.listed.add(103)  # it came back
    run.training_exchange(CURRENT, run.sample(3, 4, 1), 3)  # the probe after this round finds it
    assert run.online_partitions() == [0, 1, 2, 3] and not run.offline
