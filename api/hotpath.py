"""``POST /v1/rank`` served in front of FastAPI's per-request machinery.

A storefront calls /v1/rank for every page it shows, and FastAPI's routing, dependency solving
and exception layers cost a single worker about as much as scoring 100 candidates (bench/serve.py
found the knee at 465 requests a second through them). :class:`RankHotPath`, in front of the
whole app, answers a rank request itself when the route would answer it 200: a JSON body of a
length within ``max_body_bytes`` that :class:`api.schemas.RankRequest` accepts (read by its
faster twin, :func:`api.schemas.read_rank`), within ``max_candidates``, with a valid scoring key
when keys are configured, and a model to serve. It builds the answer with the route's own
:func:`api.routes.scoring.ranked`, so both give the same bytes and publish the same event.

Every other request (any other path, a bad body, no key, no model yet, a chunked or oversized
body) goes on to the app untouched, the body it read replayed, and gets exactly the answer
FastAPI gives it: the validation errors, 401 and 403, 413 and 503 stay the app's.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Ranking
from api.middleware import LATENCY, REQUESTS
from api.routes.scoring import ranked
from api.schemas import read_rank
from api.security import accepted, presented_key

log = logging.getLogger("streamlearn.api")

PATH = "/v1/rank"
JSON = b"application/json"


class RankHotPath:
    """The app as served: ``app`` behind /v1/rank's hot path, which reads the app's ``state``
    (what its lifespan set) and counts what it answers as RequestMetrics would."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state
        self.answered = REQUESTS.labels(PATH, "200")
        self.latency = LATENCY.labels(PATH, "200")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != scope.get("root_path", "") + PATH
        ):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = self.state
        settings = state.settings
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        content_type = headers.get("content-type")
        keys = settings.api.scoring_keys
        presented = presented_key(headers) if keys else None
        if (
            not length.isdigit()  # chunked: BodyLimit counts it as FastAPI reads it
            or int(length) > settings.api.max_body_bytes  # BodyLimit's 413
            or content_type is None  # FastAPI's strict content type: the route answers 422
            or not _json(content_type)
            or (keys and (presented is None or not accepted(presented, keys)))
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        served = state.holder.current
        request = read_rank(body)
        if request is None or served is None or len(request.items) > settings.api.max_candidates:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            payload = ranked(
                request,
                Ranking(served, settings, state.publisher, state.clock, state.rng, state.shadows),
            )
        except Exception:
            # As Starlette's ServerErrorMiddleware answers what the route raises.
            log.exception("POST %s failed", PATH)
            REQUESTS.labels(PATH, "500").inc()
            await _answer(send, 500, b"Internal Server Error", b"text/plain; charset=utf-8")
            return
        await _answer(send, 200, payload, JSON)
        self.answered.inc()
        self.latency.observe(time.perf_counter() - start)


async def _answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this content type as JSON (else it validates the bytes
    and the route answers 422). Any doubt goes to FastAPI: it decides."""
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the body already read given again first."""
    given = False

    async def again() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again
