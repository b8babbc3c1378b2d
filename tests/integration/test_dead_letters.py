"""Bad input on the real broker: routed to the dead-letter topic with reason and origin, and the
processes keep going."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from confluent_kafka import Producer

from streamlearn.events import DeadLetter, LabeledExample
from streamlearn.settings import Settings
from streamlearn.snapshots import RedisSnapshotStore
from tests.conftest import Processes, read_topic, wait_until
from tests.unit.test_training import example
from topics import declared, ensure_topics, producer_config

pytestmark = pytest.mark.integration


def configure(processes: Processes, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Settings:
    processes.env.update(extra)
    for key, value in processes.env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    ensure_topics(settings)
    return settings


def produce(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> list[tuple[int, int]]:
    """Produce and return where each record landed (partition, offset), in order."""
    producer = Producer(producer_config(settings))
    landed: dict[int, tuple[int, int]] = {}
    for n, (topic, key, value) in enumerate(records):
        producer.produce(
            topic,
            key=key,
            value=value,
            on_delivery=lambda err, msg, n=n: landed.__setitem__(
                n, (msg.partition(), msg.offset())
            ),
        )
        producer.flush(30)
    return [landed[n] for n in range(len(records))]


def letters(settings: Settings) -> list[DeadLetter]:
    return [
        DeadLetter.model_validate_json(v)
        for _, _, v in read_topic(settings.kafka_bootstrap, settings.topic("dead-letters"))
    ]


def test_joiner_routes_bad_records_and_keeps_joining(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_ATTRIBUTION_WINDOW_S="1",
        STREAMLEARN_IDLE_TIMEOUT_S="1",
        STREAMLEARN_ALLOWED_LATENESS_S="0",
    )
    names = {role: t.name for role, t in declared(s).items()}
    processes.start("joiner", "-m", "consumers.joiner")
    now = time.time()
    good = orjson.dumps(
        {
            "recommendation_id": "ok",
            "user_id": "u1",
            "event_time": now,
            "items": [{"item_id": "a", "position": 0}],
        }
    )
    nan = good.replace(b'"position":0', b'"position":0,"features":{"x":NaN}')
    bad = [
        (names["recommendations"], b"u1", b"\x00\xff garbage"),
        (names["recommendations"], b"u1", nan),
        (
            names["outcomes"],
            b"u1",
            b'{"user_id": "u1", "item_id": "a", "kind": "view", "event_time": 1}',
        ),
        (names["outcomes"], b"u1", b'{"user_id": "u1"}'),
    ]
    where = produce(s, [*bad, (names["recommendations"], b"u1", good)])

    wait_until(lambda: len(letters(s)) >= 4, "four dead letters")
    got = sorted(letters(s), key=lambda d: (d.source_topic, d.offset))
    expected = sorted(zip(bad, where[:4], strict=True), key=lambda b: (b[0][0], b[1][1]))
    assert len(got) == 4
    for letter, ((topic, _, value), (partition, offset)) in zip(got, expected, strict=True):
        assert (letter.source_topic, letter.partition, letter.offset) == (topic, partition, offset)
        assert base64.b64decode(letter.value_b64) == value
    reasons = " | ".join(d.reason for d in got)
    assert "Invalid JSON" in reasons and "finite number" in reasons
    assert "kind: Input should be" in reasons and "Field required" in reasons

    # The joiner went on: the good recommendation closes as a negative.
    def examples() -> list[LabeledExample]:
        return [
            LabeledExample.model_validate_json(v)
            for _, _, v in read_topic(s.kafka_bootstrap, names["examples"])
        ]

    wait_until(lambda: len(examples()) == 1, "the good recommendation to be joined")
    assert [(e.example_id, e.label) for e in examples()] == [("ok:a", False)]


def test_trainer_routes_bad_examples_and_moves_past_them(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = configure(
        processes, monkeypatch, STREAMLEARN_PARTITIONS="1", STREAMLEARN_CHECKPOINT_EVERY_S="0.5"
    )
    topic = s.topic("examples")
    good = example(True).model_dump_json().encode()
    produce(s, [(topic, b"u", b"{not json"), (topic, b"u", good), (topic, b"u", b"{}")])
    processes.start("trainer", "-m", "consumers.trainer")
    store = RedisSnapshotStore.from_url(
        s.redis_url, s.snapshot_hmac_key.get_secret_value().encode(), s.topic_prefix
    )

    def at_end() -> bool:
        v = store.latest_version("ctr")
        return v is not None and store.meta("ctr", v)["offsets"] == {"0": 3}

    wait_until(at_end, "a snapshot past all three records")
    assert store.meta("ctr")["samples_seen"] == 1
    got = letters(s)
    assert [(d.source_topic, d.offset) for d in got] == [(topic, 0), (topic, 2)]
