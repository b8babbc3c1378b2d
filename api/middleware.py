"""ASGI middleware: a bound on request bodies (413), and request metrics by route and status;
the collector of what each app serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import HTTPException
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from streamlearn.serving import ModelHolder

REQUESTS = Counter(
    "streamlearn_api_requests_total", "HTTP requests by route and status.", ["route", "status"]
)
LATENCY = Histogram(
    "streamlearn_api_request_seconds",
    "HTTP request latency by route and status.",
    ["route", "status"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class BodyLimit:
    """Refuse a body over ``max_bytes`` with 413, by its Content-Length when it has one and by
    counting the bytes as they arrive when it does not (chunked), before any is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        too_large = HTTPException(413, detail=f"request body over {limit} bytes")
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _reply(send, 413, too_large.detail)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large  # FastAPI lets HTTPExceptions through its body reading
            return message

        await self.app(scope, counted, send)


class RequestMetrics:
    """Count and time every request under its route's path template, not the raw path, so that
    ids in paths do not make a time series each."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(path, str(status)).inc()
            LATENCY.labels(path, str(status)).observe(time.perf_counter() - start)


async def _reply(send: Send, status: int, detail: str) -> None:
    body = ('{"detail": "' + detail + '"}').encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ServingCollector(Collector):
    """The version in use and the swap count of each live app's holder, read at each scrape.
    One per process (Prometheus refuses a second collector of the same names)."""

    def __init__(self) -> None:
        self.holders: dict[str, ModelHolder] = {}

    def collect(self) -> Iterator[Metric]:
        version = GaugeMetricFamily(
            "streamlearn_api_model_version", "Version being served.", labels=["model"]
        )
        swaps = CounterMetricFamily(
            "streamlearn_api_model_swaps", "Versions swapped in.", labels=["model"]
        )
        for name, holder in list(self.holders.items()):
            current = holder.current
            version.add_metric([name], current.version if current else 0)
            swaps.add_metric([name], holder.swaps)
        yield version
        yield swaps


SERVING = ServingCollector()
REGISTRY.register(SERVING)
