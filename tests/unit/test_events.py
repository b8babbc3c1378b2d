from __future__ import annotations

import base64

import msgspec
import pytest

from streamlearn.errors import InvalidEventError
from streamlearn.events import (
    MAX_FEATURES,
    DeadLetter,
    ExampleRecord,
    LabeledExample,
    Outcome,
    Recommendation,
    parse,
    parse_example,
)

GOOD = (
    b'{"recommendation_id": "r1", "user_id": "u1", "event_time": 1.0,'
    b' "items": [{"item_id": "a", "position": 0, "features": {"price": 1.5, "cat": "x"}}]}'
)


def test_a_good_recommendation_parses() -> None:
    rec = parse(Recommendation, GOOD)
    assert rec.schema_version == 1 and rec.items[0].features == {"price": 1.5, "cat": "x"}
    logged = GOOD.replace(
        b'"event_time": 1.0', b'"event_time": 1.0, "epsilon": 0.05, "candidates": ["b", "a"]'
    )
    rec = parse(Recommendation, logged)
    assert (rec.epsilon, rec.candidates) == (0.05, ["b", "a"])


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
        (GOOD.replace(b'"event_time": 1.0', b'"event_time": 1.0, "epsilon": 2'), "epsilon"),
        (
            GOOD.replace(b'"event_time": 1.0', b'"event_time": 1.0, "candidates": ["b", "c"]'),
            "every item shown must be one of the candidates",
        ),
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


EXAMPLE = (
    b'{"schema_version": 1, "example_id": "r1:a", "recommendation_id": "r1", "user_id": "u1",'
    b' "item_id": "a", "position": 2, "propensity": 0.5, "served_score": 0.25,'
    b' "model_version": "ctr:v3", "context": {"segment": "bargain", "mobile": true},'
    b' "item_features": {"price": 3, "discount": 0.1}, "label": true, "outcome_kind": "click",'
    b' "value": 0, "weight": 2.5, "correction": false, "recommendation_time": 1700000000,'
    b' "outcome_time": 1700000001.5}'
)


def _pydantic_example(raw: bytes) -> dict[str, object]:
    return parse(LabeledExample, raw).model_dump()


@pytest.mark.parametrize(
    "raw",
    [
        EXAMPLE,
        # What the fast decoder leaves to pydantic, which coerces it: the same result either way.
        EXAMPLE.replace(b'"position": 2', b'"position": "2"'),
        EXAMPLE.replace(b'"label": true', b'"label": "true"'),
        EXAMPLE.replace(b', "outcome_time": 1700000001.5', b""),
    ],
)
def test_the_trainers_decoder_reads_what_pydantic_reads(raw: bytes) -> None:
    if raw == EXAMPLE:  # the fast path itself, not its fallback
        msgspec.json.decode(raw, type=ExampleRecord)
    fast = parse_example(raw)
    assert {f: getattr(fast, f) for f in fast.__struct_fields__} == _pydantic_example(raw)
    assert type(fast.item_features["price"]) is float  # a JSON integer feature is a float


@pytest.mark.parametrize(
    "bad",
    [
        EXAMPLE.replace(b'"discount": 0.1', b'"discount": NaN'),
        EXAMPLE.replace(b'"discount": 0.1', b'"discount": 1e999'),
        EXAMPLE.replace(b'"propensity": 0.5', b'"propensity": -Infinity'),
        EXAMPLE.replace(b'"u1",', b'"u1", "surprise": 1,'),
        EXAMPLE.replace(b'"schema_version": 1', b'"schema_version": 2'),
        EXAMPLE.replace(b'"user_id": "u1"', b'"user_id": ""'),
        EXAMPLE.replace(b'"item_id": "a"', b'"item_id": "' + b"a" * 129 + b'"'),
        EXAMPLE.replace(b'"discount"', b'"' + b"d" * 65 + b'"'),
        EXAMPLE.replace(b'"bargain"', b'"' + b"b" * 129 + b'"'),
        EXAMPLE.replace(b'"weight": 2.5', b'"weight": -1'),
        EXAMPLE.replace(b'"recommendation_time": 1700000000', b'"recommendation_time": -1'),
        EXAMPLE.replace(b'"outcome_kind": "click"', b'"outcome_kind": "view"'),
        EXAMPLE.replace(b'"label": true', b'"label": "perhaps"'),
        EXAMPLE.replace(
            b'"context": {',
            b'"context": {' + b"".join(b'"f%d": 1, ' % i for i in range(MAX_FEATURES)),
        ),
        EXAMPLE.replace(b'"example_id": "r1:a", ', b""),
        EXAMPLE[:-1],
        b"[]",
    ],
)
def test_the_trainers_decoder_refuses_what_pydantic_refuses(bad: bytes) -> None:
    with pytest.raises(InvalidEventError) as pydantic_says:
        parse(LabeledExample, bad)
    with pytest.raises(InvalidEventError) as fast_says:
        parse_example(bad)
    assert str(fast_says.value) == str(pydantic_says.value)
