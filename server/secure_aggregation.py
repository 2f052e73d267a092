"""The server's side of secure aggregation: one secure exchange over a Flower grid.

An exchange is two message rounds. First the devices get the round's work (training or
evaluation) together with their neighbours' public keys and the vector layout, and
reply with masked vectors; then the survivors get the unmask request and reveal what
the protocol allows. The server ends with the sum over the survivors, or with a failed
exchange that names its reason. It never holds one device's values.

Public keys are registered once per run, when the server discovers its nodes; a device
whose key changed (it restarted) sends its new key instead of a contribution, is
counted as a failure for that round and is registered again. When the federation's
devices are enrolled (the manifest names a device authority), a key arrives with its
endorsement, which the server relays to the device's neighbours; a key the authority does
not vouch for is not registered, so that device cannot join a secure round. The server's
check is for the run's sake (one uncertified neighbour makes honest devices refuse the
round); the guarantee rests on each device checking its neighbours itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from recsys_core.federated.config import FederatedConfig
from recsys_core.federated.records import RoundStatus
from recsys_core.federated.wire import (
    CONFIG_RECORD,
    METRICS_RECORD,
    PARAMETERS_RECORD,
    PUBLIC_KEY_KEY,
    SECURE_ARRAYS_RECORD,
    SECURE_CONFIG_RECORD,
    UNMASK_MESSAGE_TYPE,
    MalformedReplyError,
    TrainReply,
)
from recsys_core.secure_aggregation.fixed_point import OutOfRangeSumError
from recsys_core.secure_aggregation.identity import KeyAuthenticationError, KeyEndorsement, endorsement_problem
from recsys_core.secure_aggregation.keys import PUBLIC_KEY_BYTES
from recsys_core.secure_aggregation.layout import VectorLayout
from recsys_core.secure_aggregation.neighbours import default_threshold, neighbour_graph, plan_degree
from recsys_core.secure_aggregation.protocol import (
    InvalidContributionError,
    MaskedContribution,
    SecureAggregationError,
    UnmaskResponse,
    check_contribution,
    unmask_requests,
    unmask_sum,
)
from recsys_core.secure_aggregation.wire import (
    ExchangeSettings,
    decode_contribution,
    decode_unmask_response,
    encode_neighbours,
    encode_unmask_request,
)

logger = logging.getLogger("fedrec.server")


#: A sampled device's failure when nothing came back in time.
NO_REPLY = "no reply before the round timeout"


def short_reason(reason: str | None) -> str:
    """The last meaningful line of a client error (Ray wraps it in several lines of traceback)."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return last.split("Message: ", 1)[-1].rstrip("'>")


def reply_node(reply: Message, sent_to: dict[str, int]) -> int:
    """The node a reply is about: its sender, or, for an error the SuperLink wrote itself (a node that
    stopped reporting a heartbeat is "Node Unavailable"), the node the answered message went to."""
    return sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id) \
        if reply.has_error() else reply.metadata.src_node_id


def sent_nodes(messages: list[Message]) -> dict[str, int]:
    """Message id -> destination node, for messages the grid has sent (it sets their ids)."""
    return {message.metadata.message_id: message.metadata.dst_node_id for message in messages
            if message.metadata.message_id}


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The numpy arrays of a Flower ``ArrayRecord``."""
    return {name: array.numpy() for name, array in record.items()}


def _content_bytes(content: RecordDict) -> int:
    """Bytes of the model and protocol records (what the plain protocol counts: arrays, not config)."""
    return sum(record.count_bytes() for name, record in content.items()
               if name in (PARAMETERS_RECORD, SECURE_ARRAYS_RECORD, SECURE_CONFIG_RECORD))


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


@dataclass
class ExchangeResult:
    """The outcome of one secure exchange."""

    #: The decoded float sum over ``contributors``; None when the exchange failed.
    total: np.ndarray | None
    #: Every reply to the first step (errors included), for the caller's own bookkeeping.
    replies: list[Message]
    #: Node ids whose masked vector entered the sum (or would have, had the exchange succeeded).
    contributors: list[int]
    #: Node id and reason for every device left out.
    failures: list[dict[str, Any]]
    #: None when the sum was unmasked; otherwise why the exchange failed.
    failure: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    #: Node ids of devices that declined with a normal reply (no contribution, not a failure).
    declined: list[int] = field(default_factory=list)
    #: Set when the contributions were too few to release (the caller's gate): status and reason.
    gate: tuple[RoundStatus, str] | None = None


@dataclass
class SecureAggregator:
    """Runs secure exchanges for one server process; holds the registered public keys."""

    config: FederatedConfig
    run_name: str
    #: The federation's device authority (the manifest's): keys it does not vouch for are refused.
    authority: bytes | None = None
    public_keys: dict[int, bytes] = field(default_factory=dict)
    endorsements: dict[int, KeyEndorsement] = field(default_factory=dict)
    #: Node id -> why its key was not registered.
    refused: dict[int, str] = field(default_factory=dict)
    #: Fresh per server process, so a resumed run never masks twice with the same keystream.
    session: str = field(default_factory=lambda: os.urandom(8).hex())

    def register(self, node_id: int, public_key: object, registration: Mapping[str, Any] | None = None) -> None:
        """Registers a device's agreement key and the ``registration``'s endorsement of it, if vouched for."""
        self.public_keys.pop(node_id, None)
        self.endorsements.pop(node_id, None)
        if not (isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_BYTES):
            self.refused[node_id] = "no valid public key"
            logger.warning("node %s sent no valid public key; it cannot take part in secure aggregation", node_id)
            return
        malformed: str | None = None
        try:
            endorsement = KeyEndorsement.from_wire(registration or {})
        except KeyAuthenticationError as error:
            endorsement, malformed = None, str(error)
        if self.authority is not None:
            problem = malformed or endorsement_problem(self.authority, node_id, public_key, endorsement)
            if problem is not None:
                self.refused[node_id] = f"key not certified: {problem}"
                logger.warning("node %s cannot take part in secure aggregation: %s", node_id, problem)
                return
        self.refused.pop(node_id, None)
        self.public_keys[node_id] = public_key
        if endorsement is not None:
            self.endorsements[node_id] = endorsement

    def exchange(self, grid: Grid, messages: list[Message], layout: VectorLayout, purpose: str,
                 server_round: int, weight_scale: float = 1.0,
                 gate: Callable[[int], tuple[RoundStatus, str] | None] | None = None) -> ExchangeResult:
        """Sends ``messages`` (one per device) with the protocol's setup, then unmasks the sum of the replies.

        ``gate`` says, from the number of contributions alone, why their sum must not be released
        (too few updates, too few noise shares): it is asked before any unmask request, so a sum that
        would be discarded is never unmasked at all.
        """
        secure = self.config.secure_aggregation
        exchange_id = f"{self.run_name}/{self.session}/{purpose}"
        nodes = [message.metadata.dst_node_id for message in messages]
        unregistered = [node for node in nodes if node not in self.public_keys]
        failures = [{"node": node, "reason": self.refused.get(node, "no registered public key")}
                    for node in unregistered]
        messages = [message for message in messages if message.metadata.dst_node_id in self.public_keys]
        nodes = [message.metadata.dst_node_id for message in messages]
        if len(nodes) < 2:
            return ExchangeResult(None, [], [], failures, "fewer than 2 devices with registered keys")
        degree = secure.degree or plan_degree(len(nodes), secure.dropout_tolerance)
        graph = neighbour_graph(nodes, min(degree, len(nodes) - 1),
                                hashlib.sha256(f"{exchange_id}/{server_round}".encode()).digest())
        threshold = default_threshold(min(len(neighbours) for neighbours in graph.values()))
        sent = []
        for message in messages:
            node = message.metadata.dst_node_id
            settings = ExchangeSettings(exchange_id, server_round, threshold, len(nodes), secure.modulus_bits,
                                        self.public_keys[node], layout, weight_scale)
            content = RecordDict({**dict(message.content.items()),
                                  SECURE_ARRAYS_RECORD: _record(encode_neighbours(
                                      {other: self.public_keys[other] for other in graph[node]},
                                      self.endorsements)),
                                  SECURE_CONFIG_RECORD: ConfigRecord(settings.to_wire())})
            sent.append(Message(content, dst_node_id=node, message_type=message.metadata.message_type))
        timeout = self.config.server.round_timeout
        replies = list(grid.send_and_receive(sent, timeout=timeout))
        sent_to = sent_nodes(sent)
        result = ExchangeResult(None, replies, [], failures,
                                bytes_down=sum(_content_bytes(m.content) for m in sent))
        codec = layout.codec(len(nodes), secure.modulus_bits)
        contributions: dict[int, MaskedContribution] = {}
        for reply in replies:
            node = reply_node(reply, sent_to)
            problem = self._reply_problem(reply)
            if problem == "declined":
                result.declined.append(node)
                continue
            if problem is None:
                result.bytes_up += reply.content[SECURE_ARRAYS_RECORD].count_bytes()
                try:
                    contribution = decode_contribution(record_arrays(reply.content.array_records[SECURE_ARRAYS_RECORD]))
                    check_contribution(contribution, server_round, graph[node], codec)
                    contributions[node] = contribution
                    continue
                except (ValueError, InvalidContributionError) as error:
                    problem = f"contribution rejected: {error}"
            failures.append({"node": node, "reason": problem})
        answered = {reply_node(reply, sent_to) for reply in replies}
        failures += [{"node": node, "reason": NO_REPLY}
                     for node in nodes if node not in answered]
        result.contributors = sorted(contributions)
        if not contributions:
            result.failure = "no masked contribution arrived"
            return result
        if gate is not None and (refused := gate(len(contributions))) is not None:
            result.gate, result.failure = refused, f"{refused[1]}; nothing was unmasked"
            return result
        responses = self._unmask(grid, contributions, graph, server_round, exchange_id, result)
        try:
            result.total = unmask_sum(contributions, graph, responses, threshold, codec)
        except (SecureAggregationError, OutOfRangeSumError) as error:
            result.failure = str(error)
        return result

    def _reply_problem(self, reply: Message) -> str | None:
        """None for a usable contribution, ``"declined"``, or why the reply is unusable."""
        if reply.has_error():
            return short_reason(reply.error.reason)
        try:
            declined = TrainReply.from_metrics(reply.content.metric_records.get(METRICS_RECORD, MetricRecord()),
                                               with_counts=False).declined
        except MalformedReplyError as error:
            return f"reply rejected: {error}"
        if declined:
            return "declined"
        config = reply.content.config_records.get(CONFIG_RECORD, ConfigRecord())
        if PUBLIC_KEY_KEY in config:
            self.register(reply.metadata.src_node_id, config[PUBLIC_KEY_KEY], config)
            return "the device's key changed (it restarted); registered its new key for the next round"
        if SECURE_ARRAYS_RECORD not in reply.content:
            return "reply carries no masked contribution"
        return None

    def _unmask(self, grid: Grid, contributions: dict[int, MaskedContribution], graph: dict[int, tuple[int, ...]],
                server_round: int, exchange_id: str, result: ExchangeResult) -> dict[int, UnmaskResponse]:
        requests = unmask_requests(contributions, graph, server_round)
        messages = [Message(RecordDict({SECURE_ARRAYS_RECORD: _record(encode_unmask_request(request)),
                                        SECURE_CONFIG_RECORD: ConfigRecord({"exchange-id": exchange_id})}),
                            dst_node_id=node, message_type=UNMASK_MESSAGE_TYPE)
                    for node, request in requests.items()]
        result.bytes_down += sum(_content_bytes(m.content) for m in messages)
        responses: dict[int, UnmaskResponse] = {}
        for reply in grid.send_and_receive(messages, timeout=self.config.server.round_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() or SECURE_ARRAYS_RECORD not in reply.content:
                reason = short_reason(reply.error.reason) if reply.has_error() else "no unmask arrays"
                logger.warning("round %d: node %s did not answer the unmask request: %s", server_round, node, reason)
                continue
            result.bytes_up += reply.content[SECURE_ARRAYS_RECORD].count_bytes()
            try:
                response = decode_unmask_response(record_arrays(reply.content.array_records[SECURE_ARRAYS_RECORD]))
            except ValueError as error:
                logger.warning("round %d: node %s sent a malformed unmask response: %s", server_round, node, error)
                continue
            if response.server_round != server_round:
                logger.warning("round %d: node %s answered for round %d; ignored", server_round, node,
                               response.server_round)
                continue
            for sender in response.rejected_shares:
                logger.warning("round %d: node %s rejected the share node %s sent it", server_round, node, sender)
            responses[node] = response
        return responses
