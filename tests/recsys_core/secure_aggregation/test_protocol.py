"""A whole secure-aggregation round, devices and server, without Flower."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pytest

from recsys_core.secure_aggregation.fixed_point import FixedPointCodec
from recsys_core.secure_aggregation.keys import DeviceKeys
from recsys_core.secure_aggregation.masks import mask_vector, subtract_mod
from recsys_core.secure_aggregation.neighbours import default_threshold, neighbour_graph
from recsys_core.secure_aggregation.protocol import (
    InvalidContributionError,
    MaskedContribution,
    RoundSetup,
    SecureAggregationError,
    UnmaskRequest,
    UnmaskResponse,
    answer_unmask,
    check_contribution,
    mask_contribution,
    recover_self_seed,
    unmask_requests,
    unmask_sum,
)

LENGTH = 400


@dataclass
class Transcript:
    """Everything the server receives in a round."""

    contributions: dict[int, MaskedContribution] = field(default_factory=dict)
    responses: dict[int, UnmaskResponse] = field(default_factory=dict)


@dataclass
class Federation:
    nodes: list[int]
    degree: int
    server_round: int = 1
    keys: dict[int, DeviceKeys] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = {node: DeviceKeys.generate() for node in self.nodes}
        self.graph = neighbour_graph(self.nodes, self.degree, f"round {self.server_round}".encode())
        self.threshold = default_threshold(len(self.graph[self.nodes[0]]))
        self.codec = FixedPointCodec(np.full(LENGTH, 2.0), max_devices=len(self.nodes))

    def setup(self, node: int) -> RoundSetup:
        neighbour_keys = {other: self.keys[other].public_key for other in self.graph[node]}
        return RoundSetup("run-1", self.server_round, node, neighbour_keys, self.threshold)

    def contribute(self, values: dict[int, np.ndarray], drop_before: Collection[int] = ()) -> Transcript:
        transcript = Transcript()
        for node in self.nodes:
            if node not in drop_before:
                transcript.contributions[node] = mask_contribution(self.keys[node], self.setup(node), values[node],
                                                                   self.codec)
        return transcript

    def unmask(self, transcript: Transcript, drop_during: Collection[int] = ()) -> np.ndarray:
        for node, request in unmask_requests(transcript.contributions, self.graph, self.server_round).items():
            if node not in drop_during:
                transcript.responses[node] = answer_unmask(self.keys[node], self.setup(node), request)
        return unmask_sum(transcript.contributions, self.graph, transcript.responses, self.threshold, self.codec)


def random_values(nodes: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {node: rng.uniform(-1.5, 1.5, LENGTH) for node in nodes}


# Flower node ids are large unsigned 64-bit integers.
NODES = [int(x) for x in np.random.default_rng(1).integers(1, 2**63, size=20, dtype=np.int64)]


def test_the_aggregate_equals_the_plain_sum_within_the_quantisation_error() -> None:
    federation = Federation(NODES, degree=8)
    values = random_values(NODES)
    total = federation.unmask(federation.contribute(values))
    plain = np.sum([values[node] for node in NODES], axis=0)
    assert np.all(np.abs(total - plain) <= federation.codec.max_error(len(NODES)))
    assert np.max(np.abs(total - plain)) > 0  # the test sees quantisation, so it could fail


def test_a_curious_server_sees_uniform_vectors_but_an_exact_sum() -> None:
    federation = Federation(NODES, degree=8)
    values = {node: np.zeros(LENGTH) for node in NODES}
    target = NODES[0]
    values[target] = np.full(LENGTH, 1.5)  # a constant, easy-to-spot update
    transcript = federation.contribute(values)
    total = federation.unmask(transcript)
    assert np.allclose(total, 1.5, atol=federation.codec.max_error(len(NODES))[0])
    assert transcript.responses and all(not response.pairwise_seeds for response in transcript.responses.values())

    masked = transcript.contributions[target].masked
    plain = federation.codec.encode(values[target])
    assert len(np.unique(plain)) == 1 and len(np.unique(masked)) > LENGTH * 0.99
    # chi-square on 16 equal bins of [0, 2^32) against the uniform distribution
    counts = np.bincount(masked >> np.uint32(28), minlength=16)
    chi_square = float(np.sum((counts - LENGTH / 16) ** 2 / (LENGTH / 16)))
    assert chi_square < 37.7  # the 0.999 quantile of chi-square with 15 degrees of freedom
    # Even with the target's self mask removed (the server learns it to unmask the sum),
    # the pairwise masks with live neighbours still hide the update.
    seed = recover_self_seed(target, transcript.contributions[target], federation.graph, transcript.responses,
                              federation.threshold)
    unmasked = subtract_mod(masked, mask_vector(seed, LENGTH, 32), 32)
    assert len(np.unique(unmasked)) > LENGTH * 0.99 and not np.array_equal(unmasked, plain)


@pytest.mark.parametrize("dropout", [0.1, 0.3])
def test_dropouts_within_the_threshold_are_recovered(dropout: float) -> None:
    federation = Federation(NODES, degree=19)  # complete graph: threshold 10 of 19 neighbours
    values = random_values(NODES, seed=2)
    dropped = NODES[: int(dropout * len(NODES))]
    total = federation.unmask(federation.contribute(values, drop_before=dropped))
    plain = np.sum([values[node] for node in NODES if node not in dropped], axis=0)
    survivors = len(NODES) - len(dropped)
    assert np.all(np.abs(total - plain) <= federation.codec.max_error(survivors))


def test_a_device_that_drops_during_unmasking_is_still_counted() -> None:
    federation = Federation(NODES, degree=19)
    values = random_values(NODES, seed=3)
    total = federation.unmask(federation.contribute(values), drop_during=NODES[:2])
    plain = np.sum(list(values.values()), axis=0)
    assert np.all(np.abs(total - plain) <= federation.codec.max_error(len(NODES)))


def test_dropouts_beyond_the_threshold_fail_loudly() -> None:
    federation = Federation(NODES, degree=19)
    values = random_values(NODES, seed=4)
    transcript = federation.contribute(values, drop_before=NODES[:6])
    with pytest.raises(SecureAggregationError, match="shares of its self mask arrived, 10 are needed"):
        federation.unmask(transcript, drop_during=NODES[6:11])


def test_a_forged_or_replayed_share_is_rejected_with_a_reason() -> None:
    federation = Federation(NODES[:6], degree=5)
    nodes = federation.nodes
    transcript = federation.contribute(random_values(nodes))
    holder, sender = nodes[0], nodes[1]
    request = unmask_requests(transcript.contributions, federation.graph, 1)[holder]
    forged = bytearray(request.encrypted_shares[sender])
    forged[-1] ^= 1
    shares = {**request.encrypted_shares, sender: bytes(forged)}
    response = answer_unmask(federation.keys[holder], federation.setup(holder),
                             dataclasses.replace(request, encrypted_shares=shares))
    assert sender not in response.self_mask_shares and "failed authentication" in response.rejected_shares[sender]
    # round 1's shares, replayed in round 2
    round_two = dataclasses.replace(federation.setup(holder), server_round=2)
    response = answer_unmask(federation.keys[holder], round_two, dataclasses.replace(request, server_round=2))
    assert not response.self_mask_shares and len(response.rejected_shares) == len(request.survivors)


def test_the_device_refuses_to_unmask_a_neighbour_twice_or_strangers_or_other_rounds() -> None:
    federation = Federation(NODES[:6], degree=5)
    node, neighbour = NODES[0], NODES[1]
    setup = federation.setup(node)
    keys = federation.keys[node]
    with pytest.raises(ValueError, match="both as survivors and as dropped"):
        answer_unmask(keys, setup, UnmaskRequest(1, (neighbour,), (neighbour,), {}))
    with pytest.raises(ValueError, match="not this device's neighbours"):
        answer_unmask(keys, setup, UnmaskRequest(1, (), (12345,), {}))
    with pytest.raises(ValueError, match="unmask request for round 2"):
        answer_unmask(keys, setup, UnmaskRequest(2, (), (), {}))


def test_malformed_contributions_are_refused_with_the_reason() -> None:
    federation = Federation(NODES[:6], degree=5)
    node = NODES[0]
    contribution = federation.contribute(random_values(NODES[:6])).contributions[node]
    neighbours = federation.graph[node]
    check_contribution(contribution, 1, neighbours, federation.codec)
    bad = {
        "round 1, but this is round 2": (contribution, 2),
        "must be 400 values of uint32": (dataclasses.replace(contribution, masked=contribution.masked[:-1]), 1),
        "values of uint32, got shape (400,) of int64": (
            dataclasses.replace(contribution, masked=contribution.masked.astype(np.int64)), 1),
        "exactly the neighbours": (dataclasses.replace(contribution, encrypted_shares={}), 1),
        "SHA-256 digest": (dataclasses.replace(contribution, self_mask_commitment=b"x"), 1),
    }
    for reason, (candidate, server_round) in bad.items():
        with pytest.raises(InvalidContributionError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            check_contribution(candidate, server_round, neighbours, federation.codec)


def test_a_wrong_revealed_share_is_caught_by_the_commitment() -> None:
    federation = Federation(NODES[:6], degree=5)
    transcript = federation.contribute(random_values(NODES[:6]))
    for node, request in unmask_requests(transcript.contributions, federation.graph, 1).items():
        transcript.responses[node] = answer_unmask(federation.keys[node], federation.setup(node), request)
    liar = NODES[0]
    honest = transcript.responses[liar]
    victim = next(iter(honest.self_mask_shares))
    share = bytearray(honest.self_mask_shares[victim])
    share[-1] ^= 1
    transcript.responses[liar] = dataclasses.replace(
        honest, self_mask_shares={**honest.self_mask_shares, victim: bytes(share)})
    with pytest.raises(SecureAggregationError, match="does not match its commitment"):
        unmask_sum(transcript.contributions, federation.graph, transcript.responses, federation.threshold,
                   federation.codec)


def test_a_device_refuses_to_reveal_when_fewer_than_threshold_survivors_are_named() -> None:
    keys = {node: DeviceKeys.generate() for node in (1, 2, 3, 4, 5)}
    setup = RoundSetup("run", 1, 1, {node: keys[node].public_key for node in (2, 3, 4, 5)}, threshold=3)
    # Told that three of its four neighbours dropped, it would hand over three pairwise seeds.
    with pytest.raises(ValueError, match="names 1 surviving neighbours, fewer than the threshold 3"):
        answer_unmask(keys[1], setup, UnmaskRequest(1, (2,), (3, 4, 5), {}))


@pytest.mark.parametrize("threshold", [1, 2])
def test_a_threshold_below_a_majority_of_neighbours_is_refused(threshold: int) -> None:
    keys = {node: DeviceKeys.generate() for node in (1, 2, 3, 4, 5)}
    with pytest.raises(ValueError, match="threshold must be a majority of the 4 neighbours"):
        RoundSetup("run", 1, 1, {node: keys[node].public_key for node in (2, 3, 4, 5)}, threshold=threshold)
