"""Round records: typed, round-tripped through JSON, and rejected with one clear error when malformed."""

from __future__ import annotations

import json

import pytest

from recsys_core.federated.records import (
    AccountantHistory,
    DeviceFailure,
    RoundRecord,
    RoundRecordError,
    UserLevelEvidence,
    round_record_from_dict,
)
from recsys_core.privacy.accountant import PrivacyAccountant


def full_record() -> RoundRecord:
    accountant = PrivacyAccountant("prv")
    accountant.record(1.1, 0.05, 40)
    return RoundRecord(
        round=3, sampled=4, secure_aggregation=True, status="aggregated", participants=3, declined=(2,),
        failures=(DeviceFailure(None, "no reply before the round timeout"),), joined=(0, 1, 3),
        local_privacy=(AccountantHistory.of(1, accountant),), bytes_down=100, bytes_up=90, train_loss=0.25,
        clipped_coordinates=0, user_level=UserLevelEvidence(1.0, 0.5, "distributed", 4, 3, 2),
        validation={"full/ndcg@10": 0.1}, evaluation_failures=0, seconds=1.5)


def test_a_record_survives_the_json_round_trip_with_its_accountant_history_as_data() -> None:
    record = full_record()
    text = json.dumps(record.to_dict())
    # The history is structured data in the record, not a JSON string inside the JSON.
    assert json.loads(text)["local_privacy"][0]["history"] == [
        {"noise_multiplier": 1.1, "sampling_rate": 0.05, "steps": 40}]
    assert round_record_from_dict(json.loads(text)) == record


@pytest.mark.parametrize(("change", "words"), [
    ({"status": "failed: secure aggregation"}, "status: 'failed: secure aggregation' is not one of"),
    ({"participants": "3"}, "participants: expected int"),
    ({"unknown": 1}, "unknown config key(s) unknown"),
    ({"participants": 9}, "participants within [0, sampled = 4]"),
    ({"status": "skipped"}, "status 'skipped' with reason ''"),
    ({"train_loss": float("nan")}, "train_loss: is NaN"),
    ({"train_loss": float("inf")}, "train_loss must be finite"),
])
def test_a_malformed_record_is_one_error_naming_where_and_what(change: dict, words: str) -> None:
    values = {**full_record().to_dict(), **change}
    with pytest.raises(RoundRecordError, match="rounds.jsonl, line 4") as error:
        round_record_from_dict(values, "rounds.jsonl, line 4")
    assert words in str(error.value)


def test_an_impossible_accountant_history_is_rejected() -> None:
    values = full_record().to_dict()
    values["local_privacy"][0]["history"][0]["sampling_rate"] = 1.5
    with pytest.raises(RoundRecordError, match=r"partition 1, history\[0\]\.sampling_rate"):
        round_record_from_dict(values)
