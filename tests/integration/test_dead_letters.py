"""Bad input on the real broker: routed to the dead-letter topic with reason and origin, and the
processes keep going."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from streamlearn.snapshots import open_store
from tests.conftest import Processes, configure, examples, letters, produce, wait_until
from tests.factories import example

pytestmark = pytest.mark.integration


def test_joiner_routes_bad_records_and_loses_nothing_valid(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_ATTRIBUTION_WINDOW_S="1",
        STREAMLEARN_IDLE_TIMEOUT_S="1",
        STREAMLEARN_ALLOWED_LATENESS_S="0",
        STREAMLEARN_MAX_RECORD_BYTES="4096",
    )
    recs, outs = s.topic("recommendations"), s.topic("outcomes")
    processes.start("joiner", "-m", "consumers.joiner")
    now = time.time()

    def rec(rid: str, **extra: object) -> bytes:
        return orjson.dumps(
            {
                "recommendation_id": rid,
                "user_id": f"u-{rid}",
                "event_time": now,
                "items": [{"item_id": "a", "position": 0}],
                **extra,
            }
        )

    def click(rid: str, **extra: object) -> bytes:
        return orjson.dumps(
            {
                "recommendation_id": rid,
                "user_id": f"u-{rid}",
                "item_id": "a",
                "kind": "click",
                "event_time": now + 0.5,
                **extra,
            }
        )

    nan = rec("nan").replace(b'"position":0', b'"position":0,"features":{"x":NaN}')
    bad = {
        (recs, b"\x00\xff garbage"): "Invalid JSON",
        (recs, nan): "finite number",
        (
            recs,
            rec(
                "big",
                context={"pad": "x" * 120},
                items=[
                    {"item_id": f"i{n}", "position": n, "features": {"pad": "y" * 120}}
                    for n in range(40)
                ],
            ),
        ): "exceeds the limit of 4096",
        (recs, rec("v2", schema_version=2)): "schema_version",
        (outs, b"{not json"): "Invalid JSON",
        (outs, click("x", kind="view")): "kind: Input should be",
        (outs, click("x").replace(b'"event_time"', b'"value":Infinity,"event_time"')): "value",
        (outs, click("x", schema_version=9)): "schema_version",
        (outs, click("x", surprise=1)): "Extra inputs are not permitted",
    }
    valid = [(recs, rec(f"ok{n}")) for n in range(5)] + [(outs, click(f"ok{n}")) for n in (1, 3)]
    stream = []
    for n, (topic, value) in enumerate(bad):
        stream.append((topic, b"u", value))
        if n < len(valid):
            stream.append((valid[n][0], b"u", valid[n][1]))
    stream += [(topic, b"u", value) for topic, value in valid[len(bad) :]]
    where = dict(zip(range(len(stream)), produce(s, stream), strict=True))

    wait_until(lambda: len(letters(s)) >= len(bad), f"{len(bad)} dead letters")
    got = letters(s)
    assert len(got) == len(bad)  # every bad record, and nothing valid
    origin = {(t, v): where[n] for n, (t, _, v) in enumerate(stream)}
    for letter in got:
        value = base64.b64decode(letter.value_b64)
        reason = bad[(letter.source_topic, value)]
        assert reason in letter.reason, (reason, letter.reason)
        assert (letter.partition, letter.offset) == origin[(letter.source_topic, value)]

    # Nothing valid lost: every good recommendation is joined, the two clicked ones positive.
    def joined() -> dict[str, bool]:
        return {e.example_id: e.label for e in examples(s)}

    wait_until(lambda: len(joined()) == 5, "the five valid recommendations to be joined")
    assert joined() == {f"ok{n}:a": n in (1, 3) for n in range(5)}


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
    store = open_store(s)

    def at_end() -> bool:
        v = store.latest_version("ctr")
        return v is not None and store.meta("ctr", v)["offsets"] == {"0": 3}

    wait_until(at_end, "a snapshot past all three records")
    assert store.meta("ctr")["samples_seen"] == 1
    got = letters(s)
    assert [(d.source_topic, d.offset) for d in got] == [(topic, 0), (topic, 2)]
