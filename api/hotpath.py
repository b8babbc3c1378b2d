"""``POST /v1/rank`` served in front of FastAPI's per-request machinery.

A storefront calls /v1/rank for every page it shows, and FastAPI's routing, dependency solving
and exception layers cost a single worker about as much as scoring 100 candidates (bench/serve.py
found the knee at 465 requests a second through them). This middleware answers a rank request
itself when it is one the route would answer 200: a JSON body of known length that
:class:`api.schemas.RankRequest` accepts (read by its faster twin,
:func:`api.schemas.read_rank`), within ``max_candidates``, with a valid scoring key when keys
are configured, and a model to serve. It builds the answer with the route's own
:func:`api.routes.scoring.ranked`, so both give the same bytes and publish the same event.

Every other request (any other path, a bad body, no key, no model yet, a chunked body) goes on to
the app untouched, the body it read replayed, and gets exactly the answer FastAPI gives it: the
validation errors, 401 and 403, 413 and 503 stay the route's.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Ranking
from api.routes.scoring import ranked, router
from api.schemas import read_rank
from api.security import accepted, presented_key

PATH = "/v1/rank"
ROUTE = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == PATH)
JSON = b"application/json"


class RankHotPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != scope.get("root_path", "") + PATH
        ):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        settings = state.settings
        headers = Headers(scope=scope)
        content_type = headers.get("content-type")
        keys = settings.api.scoring_keys
        presented = presented_key(headers) if keys else None
        if (
            "content-length" not in headers  # chunked: BodyLimit counts it as FastAPI reads it
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
        scope["route"] = ROUTE  # what RequestMetrics labels the request by
        payload = ranked(
            request,
            Ranking(served, settings, state.publisher, state.clock, state.rng, state.shadows),
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", b"%d" % len(payload)),
                    (b"content-type", JSON),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


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
