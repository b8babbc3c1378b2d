"""/v1/rank's hot path: it answers what the route would answer 200, the same answer and event,
and hands everything else to FastAPI untouched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from api.hotpath import RankHotPath
from api.schemas import RankRequest, read_rank
from streamlearn.events import Recommendation
from streamlearn.snapshots import ObjectSnapshotStore
from tests.factories import RANK, RecordingPublisher
from tests.unit.test_api import app_client, serving


def chunked(body: bytes) -> Iterator[bytes]:
    """A body without Content-Length, which the hot path leaves to FastAPI."""
    yield body[:10]
    yield body[10:]


def both_ways(
    c: TestClient, body: Any, headers: dict[str, str] | None = None
) -> tuple[tuple[int, Any], tuple[int, Any]]:
    """The answer by the hot path (when it takes the request) and by FastAPI's route."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    answers = []
    for content in (raw, chunked(raw)):
        r = c.post("/v1/rank", content=content, headers=headers)
        answer = r.json()
        if r.status_code == 200:
            answer.pop("recommendation_id")
        answers.append((r.status_code, answer))
    return answers[0], answers[1]


def rank_count(c: TestClient, status: int) -> float:
    """/v1/rank's requests answered ``status``, as /metrics counts them."""
    line = f'streamlearn_api_requests_total{{route="/v1/rank",status="{status}"}} '
    found = [x for x in c.get("/metrics").text.splitlines() if x.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_valid_request_gets_the_routes_answer_and_event(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    with app_client(store, publisher) as c:
        serving(c, store)
        before = rank_count(c, 200)
        fast, route = both_ways(c, {**RANK, "epsilon": 0, "explain": True})
        assert fast == route and fast[0] == 200 and len(fast[1]["items"]) == 2
        assert rank_count(c, 200) == before + 2  # both counted under the route's path
        assert "explanation" in fast[1]["items"][0]
        events = [e for _, _, e in publisher.events]
        assert len(events) == 2
        for e in events:
            e.pop("recommendation_id")
            e.pop("event_time")
        assert events[0] == events[1]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**RANK, "k": 0}, 422),
        ({**RANK, "surprise": 1}, 422),
        ({**RANK, "items": [RANK["items"][0]] * 2}, 422),  # an item twice
        ({**RANK, "items": [{"item_id": f"i{n}"} for n in range(4)]}, 422),  # over max_candidates
        (b'{"user_id": "u1", "items": [{"item_id": "a", "features": {"p": 1e999}}]}', 422),
        (b"not json", 422),
        (b"", 422),
    ],
)
def test_a_bad_request_gets_exactly_fastapis_answer(
    store: ObjectSnapshotStore, publisher: RecordingPublisher, body: Any, status: int
) -> None:
    with app_client(store, publisher) as c:
        serving(c, store)
        fast, route = both_ways(c, body)
        assert fast == route and fast[0] == status
        assert publisher.events == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer k1"}, 200),
        ({"Authorization": "bearer k1"}, 200),
        ({"Authorization": "Bearer  k1 "}, 200),  # FastAPI strips the credentials
        ({"Authorization": "Bearer k3"}, 403),
        ({"Authorization": "Basic k1"}, 401),  # not a bearer token, and no X-API-Key
        ({"Authorization": "Basic x", "X-API-Key": "k2"}, 200),
        ({"Authorization": "Bearer nope", "X-API-Key": "k2"}, 403),  # the bearer token wins
        ({"X-API-Key": ""}, 401),
        ({"X-API-Key": "adm"}, 403),  # the admin key does not score
    ],
)
def test_scoring_keys_are_judged_as_fastapi_judges_them(
    store: ObjectSnapshotStore,
    publisher: RecordingPublisher,
    headers: dict[str, str],
    status: int,
) -> None:
    with app_client(store, publisher, scoring_keys=["k1", "k2"], admin_key="adm") as c:
        serving(c, store)
        fast, route = both_ways(c, {**RANK, "epsilon": 0}, headers)
        assert fast[0] == route[0] == status
        assert fast == route


def test_no_model_yet_is_fastapis_503(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    with app_client(store, publisher) as c:
        fast, route = both_ways(c, RANK)
        assert fast == route and fast[0] == 503


def test_an_oversized_body_is_bodylimits_413(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    with app_client(store, publisher, max_body_bytes=1024) as c:
        serving(c, store)
        big = {**RANK, "context": {f"f{n}": "v" * 20 for n in range(40)}}
        fast, route = both_ways(c, big)
        assert fast == route and fast[0] == 413
        assert both_ways(c, RANK)[0][0] == 200  # within the limit: the hot path's


class Failing:
    connected = True

    def publish(self, topic: str, key: str, value: bytes) -> bool:
        raise RuntimeError("a fault the route does not expect")


def test_a_failure_while_ranking_is_a_500_either_way_and_counted(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    with app_client(store, publisher) as c:
        serving(c, store)
        before = rank_count(c, 500)
        c.app.state.publisher = Failing()  # type: ignore[attr-defined]
        raw = json.dumps(RANK).encode()
        headers = {"content-type": "application/json"}
        for content in (raw, chunked(raw)):  # the hot path's, then the route's
            c2 = TestClient(c.app, raise_server_exceptions=False)
            r = c2.post("/v1/rank", content=content, headers=headers)
            assert r.status_code == 500 and r.text == "Internal Server Error"
        assert rank_count(c, 500) == before + 2


class Inner:
    """The app behind the hot path: records what reaches it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(hot: RankHotPath, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """One POST /v1/rank through the hot path, its body in two messages; the status sent."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/rank",
        "root_path": "",
        "headers": headers,
    }
    parts = [body[:5], body[5:]]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(hot(scope, receive, send))
    return int(sent[0]["status"])


def test_what_the_hot_path_answers_never_reaches_fastapi(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    with app_client(store, publisher) as c:
        serving(c, store)
        inner = Inner()
        hot = RankHotPath(inner, c.app.state)  # type: ignore[attr-defined]
        good = json.dumps(RANK).encode()
        typed = [(b"content-type", b"application/json; charset=utf-8")]
        length = [(b"content-length", b"%d" % len(good))]
        assert call(hot, good, typed + length) == 200
        assert inner.bodies == [] and len(publisher.events) == 1
        # Each handed on whole, its body read again by FastAPI as it came.
        bad = json.dumps({**RANK, "k": 0}).encode()
        bad_length = [(b"content-length", b"%d" % len(bad))]
        assert call(hot, bad, typed + bad_length) == 299
        assert call(hot, good, typed) == 299  # chunked
        assert call(hot, good, length) == 299  # no content type: FastAPI's 422
        assert call(hot, good, [(b"content-type", b"text/plain"), *length]) == 299
        assert inner.bodies == [bad, good, good, good]
        assert len(publisher.events) == 1


GOOD = json.dumps(
    {
        "user_id": "u1",
        "context": {"segment": "gamer", "mobile": True, "hour": 13},
        "items": [
            {"item_id": "a", "features": {"category": "toys", "price": 1.5}},
            {"item_id": "b", "features": {"category": "books", "price": 2}},
            {"item_id": "c"},
        ],
        "k": 2,
        "epsilon": 0.1,
        "explain": False,
    }
)
# Each replaces one part of GOOD: what pydantic refuses, and what it accepts by coercion.
EDITS = [
    ('"price": 1.5', '"price": NaN'),
    ('"price": 1.5', '"price": 1e999'),
    ('"price": 1.5', '"price": -Infinity'),
    ('"price": 1.5', '"price": null'),
    ('"price": 1.5', '"price": "1.5"'),
    ('"price": 1.5', '"price": [1.5]'),
    ('"price": 2', '"price": 20000000000000000000000000000'),
    ('"price": 2', '"price": ' + "9" * 400),
    ('"mobile": true', '"mobile": 1'),
    ('"hour": 13', '"hour": -0.0'),
    ('"category": "toys"', '"category": "' + "t" * 129 + '"'),
    ('"category": "toys"', '"category": "' + "t" * 128 + '"'),
    ('"category"', '"' + "c" * 65 + '"'),
    ('"category"', '"' + "c" * 64 + '"'),
    ('"category"', '""'),
    ('"u1"', '""'),
    ('"u1"', '"' + "u" * 129 + '"'),
    ('"u1"', '"\u00e9\u00e9"'),
    ('"u1"', "1"),
    ('"k": 2', '"k": 0'),
    ('"k": 2', '"k": 2.0'),
    ('"k": 2', '"k": "2"'),
    ('"k": 2', '"k": true'),
    ('"k": 2', '"k": 501'),
    ('"k": 2', '"k": 2, "k": 3'),
    ('"epsilon": 0.1', '"epsilon": 1.01'),
    ('"epsilon": 0.1', '"epsilon": -0.0'),
    ('"epsilon": 0.1', '"epsilon": null'),
    ('"epsilon": 0.1', '"epsilon": 1'),
    ('"epsilon": 0.1', '"epsilon": true'),
    ('"explain": false', '"explain": 0'),
    ('"explain": false', '"explain": "false"'),
    ('"explain": false', '"explain": null'),
    ('"item_id": "c"', '"item_id": "a"'),
    ('"item_id": "c"', '"item_id": "c", "surprise": 1'),
    ('"k": 2,', '"k": 2, "surprise": 1,'),
    ('{"item_id": "c"}', '{"item_id": "c", "features": {}}'),
    ('{"item_id": "c"}', '{"item_id": "c", "features": null}'),
    (', "context": {"segment": "gamer", "mobile": true, "hour": 13}', ""),
    ('"user_id": "u1", ', ""),
    ('"items": [', '"items": [], "x": ['),
]


def pydantic_reads(raw: bytes) -> dict[str, Any] | None:
    try:
        return RankRequest.model_validate_json(raw).model_dump()
    except ValidationError:
        return None


@pytest.mark.parametrize(
    "edits", [[], *([e] for e in EDITS)] + [list(EDITS[i::7]) for i in range(7)]
)
def test_the_hot_paths_reader_accepts_only_what_pydantic_accepts_and_reads_it_the_same(
    edits: list[tuple[str, str]],
) -> None:
    text = GOOD
    for old, new in edits:  # combined, an edit whose part another has changed does nothing
        text = text.replace(old, new, 1)
    assert (text == GOOD) == (not edits)
    raw = text.encode()
    fast, slow = read_rank(raw), pydantic_reads(raw)
    if fast is not None:  # else the route reads it, with pydantic
        assert slow is not None, text
        read = msgspec.to_builtins(fast)
        read["items"] = [{"features": {}, **c} for c in read["items"]]
        read = {"context": {}, "epsilon": None, "explain": False, "k": 10, **read}
        # As JSON, which tells 2 from 2.0, 1.0 from true and 0.0 from -0.0: the same values.
        assert json.dumps(read, sort_keys=True) == json.dumps(slow, sort_keys=True)
    if not edits:
        assert fast is not None  # the fast path itself


def test_the_event_published_is_byte_for_byte_what_the_recommendation_model_writes(
    store: ObjectSnapshotStore, publisher: RecordingPublisher
) -> None:
    # ranked() writes the event without building the model: every body either path accepts
    # (coerced values among them) gives the bytes the model itself would write.
    with app_client(store, publisher) as c:
        serving(c, store)
        for old, new in [("", ""), *EDITS]:
            both_ways(c, GOOD.replace(old, new, 1).encode())
    assert len(publisher.raw) >= 20
    for raw in publisher.raw:
        assert Recommendation.model_validate_json(raw).model_dump_json().encode() == raw
