"""Hash-chained run records: every edit, removal and reordering is found and named."""

from __future__ import annotations

import copy

import pytest

from recsys_core.audit.hash_chain import genesis_hash, head_of, linked, seal, verify_chain, verify_seal

CONFIG = {"seed": 0, "privacy": {"user_level": {"noise_multiplier": 1.1}}}


def chain(count: int = 5) -> list[dict]:
    records: list[dict] = []
    for round_number in range(1, count + 1):
        record = {"round": round_number, "joined": [round_number, 7], "train_loss": 0.5 / round_number}
        records.append(linked(record, head_of(records, genesis_hash(CONFIG))))
    return records


def problems(records: list[dict], config: dict = CONFIG) -> list[str]:
    return [str(problem) for problem in verify_chain(records, genesis_hash(config))]


def test_an_untouched_chain_verifies() -> None:
    assert problems(chain()) == []
    assert problems([]) == []


def test_an_edited_record_is_named() -> None:
    records = chain()
    records[2]["joined"] = [3]
    assert problems(records) == ["rounds.jsonl line 3 (round 3): edited: its content no longer matches its hash"]


def test_a_removed_record_is_named() -> None:
    records = chain()
    del records[1]
    found = problems(records)
    assert any("line 2 (round 3)" in text and "were removed" in text for text in found)
    assert any("round(s) 2 missing" in text for text in found)


def test_reordered_records_are_named() -> None:
    records = chain()
    records[1], records[2] = records[2], records[1]
    found = problems(records)
    assert any("line 3 (round 2)" in text and "reordered" in text for text in found)
    assert any("out of order" in text for text in found)


def test_an_edited_config_breaks_the_first_link() -> None:
    edited = copy.deepcopy(CONFIG)
    edited["privacy"]["user_level"]["noise_multiplier"] = 2.0
    assert any("line 1" in text and "reordered or re-started" not in text and "removed" in text
               for text in problems(chain(), edited))


@pytest.mark.parametrize("change", ["last round removed", "ledger edited", "other head"])
def test_the_seal_binds_the_last_round_and_the_ledger(change: str) -> None:
    records = chain()
    sealed = seal(head_of(records, genesis_hash(CONFIG)), len(records), "ab" * 32)
    assert verify_seal(records, genesis_hash(CONFIG), sealed, "ab" * 32, expected_head=sealed["head"]) == []
    ledger, expected = "ab" * 32, sealed["head"]
    if change == "last round removed":
        records = records[:-1]
    elif change == "ledger edited":
        ledger = "cd" * 32
    else:
        expected = "00" * 32
    found = [str(problem) for problem in verify_seal(records, genesis_hash(CONFIG), sealed, ledger, expected)]
    assert len(found) == 1
    assert {"last round removed": "rounds were removed", "ledger edited": "privacy-ledger.json",
            "other head": "rewritten"}[change] in found[0]
