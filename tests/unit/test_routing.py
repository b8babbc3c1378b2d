"""A body validated in one pass is answered exactly as FastAPI's own route answers it: the same
model for a valid body, the same status and detail for every bad one."""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from api import routing
from api.app import _invalid_request
from api.schemas import RankRequest
from tests.factories import RANK


def _app() -> FastAPI:
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, _invalid_request)  # as the API's own
    for prefix, route_class in (("/one-pass", routing.OnePassJSON), ("/standard", None)):
        router = APIRouter(prefix=prefix, **({"route_class": route_class} if route_class else {}))

        @router.post("/rank")
        async def rank(body: RankRequest) -> dict[str, object]:
            return body.model_dump()

        app.include_router(router)
    return app


CANDIDATES = [{"item_id": f"i{n}", "features": {"category": "toys", "price": n}} for n in range(5)]
BODIES = [
    json.dumps({**RANK, "items": CANDIDATES, "k": 3}).encode(),
    json.dumps({**RANK, "context": {"mobile": True, "hour": 7, "segment": "x"}}).encode(),
    # Refused, each its own way:
    json.dumps({**RANK, "items": CANDIDATES + CANDIDATES[:1]}).encode(),  # an item twice
    json.dumps({**RANK, "k": 0}).encode(),
    json.dumps({**RANK, "items": []}).encode(),
    json.dumps({**RANK, "surprise": 1}).encode(),
    json.dumps({**RANK, "context": {"f": [1]}}).encode(),
    json.dumps({**RANK, "context": {"f": "x" * 129}}).encode(),
    json.dumps({**RANK, "context": {"": 1}}).encode(),
    json.dumps(RANK).encode()[:-1] + b', "epsilon": NaN}',
    json.dumps(RANK).encode()[:-1] + b', "epsilon": 1e400}',
    json.dumps({**RANK, "context": {"f": 1}}).encode().replace(b"1}", b"-Infinity}"),
    json.dumps(RANK).encode()[:-3],  # cut short
    b"\xff\xfe not UTF-8",
    b"[]",
    b"null",
]


@pytest.mark.parametrize("body", BODIES)
def test_the_one_pass_route_answers_as_fastapis_own(body: bytes) -> None:
    with TestClient(_app()) as client:
        headers = {"Content-Type": "application/json"}
        one = client.post("/one-pass/rank", content=body, headers=headers)
        standard = client.post("/standard/rank", content=body, headers=headers)
    assert (one.status_code, one.json()) == (standard.status_code, standard.json())


def test_a_valid_body_is_not_read_a_second_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The short cut is taken: the standard library's parser never sees a valid body."""
    read_again = []
    monkeypatch.setattr(routing.Request, "json", lambda self: read_again.append(self))
    with TestClient(_app()) as client:
        r = client.post("/one-pass/rank", json=json.loads(BODIES[0]))
    assert r.status_code == 200 and r.json()["k"] == 3 and read_again == []
