"""Hash chains over a run's records: any edited, removed or reordered record breaks a link.

Each per-round record carries ``chain = {"previous": H(i-1), "hash": H(i)}`` with
``H(i) = sha256(H(i-1) || canonical JSON of record i without its chain)``. The first
link's ``previous`` is the *genesis*, a hash of the run's resolved config, so the config
is bound too. When the run ends, a *seal* links the last round and the privacy ledger's
bytes into one head hash that the run prints.

A chain is tamper-evident, not tamper-proof: whoever can write the run directory can
recompute every hash after an edit. Keeping the printed head somewhere the run cannot
write (a lab notebook, a paper, a ticket) and passing it to ``fedrec audit
--expected-head`` closes that gap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHAIN_KEY = "chain"
_GENESIS_LABEL = b"fedrec record chain v1\n"


def canonical_json(value: Any) -> bytes:
    """The one byte string a JSON value hashes as: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def genesis_hash(config: Mapping[str, Any]) -> str:
    """The chain's starting point: a hash of the run's resolved config."""
    return hashlib.sha256(_GENESIS_LABEL + canonical_json(dict(config))).hexdigest()


def link_hash(previous: str, body: Mapping[str, Any]) -> str:
    """``sha256(previous || canonical JSON of body)`` as hex."""
    return hashlib.sha256(bytes.fromhex(previous) + canonical_json(dict(body))).hexdigest()


def linked(record: Mapping[str, Any], previous: str) -> dict[str, Any]:
    """A copy of ``record`` carrying its chain link after ``previous``."""
    body = {key: value for key, value in record.items() if key != CHAIN_KEY}
    # Hash what a reader will parse back, so floats and tuples hash as their JSON form.
    body = json.loads(json.dumps(body, default=float))
    return {**body, CHAIN_KEY: {"previous": previous, "hash": link_hash(previous, body)}}


def head_of(records: Sequence[Mapping[str, Any]], genesis: str) -> str:
    """The hash of the last record, or the genesis when there is none."""
    if not records:
        return genesis
    return str(records[-1][CHAIN_KEY]["hash"])


def seal(last_hash: str, rounds: int, ledger_sha256: str | None) -> dict[str, Any]:
    """The run's closing link: the last round's hash, how many rounds, and the ledger file's sha256."""
    body = {"last_round_hash": last_hash, "rounds": rounds, "ledger_sha256": ledger_sha256}
    return {**body, "head": link_hash(last_hash, body)}


@dataclass(frozen=True)
class ChainProblem:
    """One broken link: where (line of rounds.jsonl, or a file) and what it means."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


def verify_chain(records: Sequence[Mapping[str, Any]], genesis: str) -> list[ChainProblem]:
    """Every break in the chain of ``records`` (in file order), each named by line and round.

    An edited record no longer matches its own hash. A removed record leaves the next
    one pointing at a hash no record has. A record moved elsewhere points at a record
    that is not the one before it, and its round number is out of order.
    """
    problems: list[ChainProblem] = []
    own_hashes = {str(record.get(CHAIN_KEY, {}).get("hash")): index for index, record in enumerate(records)}
    expected_previous = genesis
    previous_round = 0
    for index, record in enumerate(records):
        where = f"rounds.jsonl line {index + 1} (round {record.get('round', '?')})"
        link = record.get(CHAIN_KEY)
        if not isinstance(link, Mapping) or not {"previous", "hash"} <= set(link):
            problems.append(ChainProblem(where, "carries no chain link: written without one, or the link was "
                                                "stripped"))
            expected_previous = genesis if link is None else str(link.get("hash", ""))
            continue
        body = {key: value for key, value in record.items() if key != CHAIN_KEY}
        if link_hash(str(link["previous"]), body) != link["hash"]:
            problems.append(ChainProblem(where, "edited: its content no longer matches its hash"))
        if link["previous"] != expected_previous:
            earlier = own_hashes.get(str(link["previous"]))
            if earlier is not None:
                problems.append(ChainProblem(where, f"reordered: it follows line {earlier + 1} in the chain"))
            elif link["previous"] == genesis:
                problems.append(ChainProblem(where, "reordered or re-started: it links to the run's start, but "
                                                    "records come before it"))
            elif index == 0:
                problems.append(ChainProblem(where, "does not chain from config.json: config.json was edited after "
                                                    "the run started, or records before this one were removed"))
            else:
                problems.append(ChainProblem(where, "the record it links to is missing: one or more records before "
                                                    "it were removed"))
        round_number = record.get("round")
        if isinstance(round_number, int):
            if round_number <= previous_round:
                problems.append(ChainProblem(where, f"out of order: round {round_number} after round "
                                                    f"{previous_round}"))
            elif round_number > previous_round + 1:
                missing = ", ".join(map(str, range(previous_round + 1, round_number)))
                problems.append(ChainProblem(where, f"round(s) {missing} missing before it"))
            previous_round = max(previous_round, round_number)
        expected_previous = str(link["hash"])
    return problems


def verify_seal(records: Sequence[Mapping[str, Any]], genesis: str, sealed: Mapping[str, Any],
                ledger_sha256: str | None, expected_head: str | None = None) -> list[ChainProblem]:
    """Breaks between the rounds, the ledger and the seal written when the run ended."""
    problems = []
    where = "record-chain.json"
    body = {key: sealed.get(key) for key in ("last_round_hash", "rounds", "ledger_sha256")}
    if link_hash(str(body["last_round_hash"]), body) != sealed.get("head"):
        problems.append(ChainProblem(where, "edited: the seal no longer matches its head hash"))
    if body["last_round_hash"] != head_of(records, genesis) or body["rounds"] != len(records):
        problems.append(ChainProblem(where, f"sealed {body['rounds']} rounds ending in {body['last_round_hash']}, "
                                            f"but rounds.jsonl holds {len(records)} ending in "
                                            f"{head_of(records, genesis)}: rounds were removed or added after the run"))
    if body["ledger_sha256"] != ledger_sha256:
        problems.append(ChainProblem("privacy-ledger.json", "edited, removed or added after the run: its sha256 "
                                                            "is not the one sealed"))
    if expected_head is not None and sealed.get("head") != expected_head:
        problems.append(ChainProblem(where, f"head {sealed.get('head')} is not the expected {expected_head}: the "
                                            "run directory was rewritten, hashes included"))
    return problems
