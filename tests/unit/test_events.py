from __future__ import annotations

import base64

import pytest

from streamlearn.errors import InvalidEventError
from streamlearn.events import MAX_FEATURES, DeadLetter, Outcome, Recommendation, parse

GOOD = (
    b'{"recommendation_id": "r1", "user_id": "u1", "event_time": 1.0,'
    b' "items": [{"item_id": "a", "position": 0, "features": {"price": 1.5, "cat": "x"}}]}'
)


def test_a_good_recommendation_parses() -> None:
    rec = parse(Recommendation, GOOD)
    assert rec.schema_version == 1 and rec.items[0].features == {"price": 1.5, "cat": "x"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00\xffnot json", "Invalid JSON"),
        (GOOD.replace(b'"price": 1.5', b'"price": NaN'), "finite number"),
        (GOOD.replace(b'"u1"', b'"u1", "surprise": 1'), "surprise: Extra inputs are not permitted"),
        (GOOD.replace(b'"position": 0', b'"position": -1'), "items.0.position"),
        (
            GOOD.replace(b'"schema_version": 1', b"").replace(b"{", b'{"schema_version": 2,', 1),
            "schema_version",
        ),
        (GOOD.replace(b'"user_id": "u1"', b'"user_id": "' + b"u" * 500 + b'"'), "user_id"),
        (None, "tombstone"),
    ],
)
def test_bad_records_are_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEventError, match=reason):
        parse(Recommendation, raw)


def test_feature_count_is_bounded() -> None:
    features = ",".join(f'"f{i}": 1' for i in range(MAX_FEATURES + 1))
    raw = GOOD.replace(b'{"price": 1.5, "cat": "x"}', ("{" + features + "}").encode())
    with pytest.raises(InvalidEventError, match="features"):
        parse(Recommendation, raw)


def test_repeated_items_are_refused() -> None:
    raw = GOOD.replace(b"}]}", b'}, {"item_id": "a", "position": 1}]}')
    with pytest.raises(InvalidEventError, match="repeat"):
        parse(Recommendation, raw)


def test_outcome_kind_and_value_are_checked() -> None:
    with pytest.raises(InvalidEventError, match="value"):
        parse(
            Outcome,
            b'{"user_id": "u", "item_id": "i", "kind": "click", "value": -1, "event_time": 1}',
        )


def test_dead_letter_keeps_the_original_bytes() -> None:
    letter = DeadLetter.of("bad", "topic", 2, 41, b"k", b"\xff\x00", 5.0)
    assert base64.b64decode(letter.value_b64) == b"\xff\x00"
    assert (letter.source_topic, letter.partition, letter.offset) == ("topic", 2, 41)


def test_oversized_records_are_refused_before_parsing() -> None:
    with pytest.raises(InvalidEventError, match="exceeds the limit of 1024"):
        parse(Recommendation, GOOD + b" " * 2000, max_bytes=1024)
