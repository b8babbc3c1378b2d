"""The FastAPI application, as served. Run: ``uvicorn api.app:app`` or ``python -m api``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import multiprocess
from redis.exceptions import RedisError

from api.deps import Publisher
from api.hotpath import RankHotPath
from api.middleware import SERVING, BodyLimit, RequestMetrics
from api.routes import admin, dashboard, health, scoring
from streamlearn import __version__
from streamlearn.clock import SystemClock
from streamlearn.errors import (
    ArchiveError,
    SignatureError,
    SnapshotError,
    SnapshotNotFound,
    StoreUnavailable,
)
from streamlearn.registry import Registry
from streamlearn.serving import ModelHolder
from streamlearn.settings import Settings, get_settings
from streamlearn.snapshots import SnapshotStore, open_store

log = logging.getLogger("streamlearn.api")

DESCRIPTION = """\
Scores candidates with the champion version of the configured model, logs what it serves to
Kafka for the joiner, and manages versions. Every response names the version that produced it.

Keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Scoring keys are optional (off by
default); the admin endpoints need the admin key.
"""


def create_app(
    settings: Settings | None = None,
    store: SnapshotStore | None = None,
    publisher: Publisher | None = None,
) -> FastAPI:
    """The app; ``store`` and ``publisher`` default to the configured Redis + archive and Kafka."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from api.publishing import EventPublisher

        settings.check_safe()
        snapshots = store or open_store(settings)
        events = publisher or EventPublisher(settings)
        holder = ModelHolder(snapshots, settings.model.name)
        # Every configured model's own champion, in shadow: whichever is served under the
        # champion's name, the others score beside it (the served one is skipped).
        shadows = (
            [ModelHolder(snapshots, spec.name, across=False) for spec in settings.models]
            if settings.api.shadow_share > 0 and settings.challengers
            else []
        )
        app.state.settings = settings
        app.state.holder = holder
        app.state.shadows = shadows
        app.state.registry = Registry(snapshots)
        app.state.publisher = events
        app.state.clock = SystemClock()
        app.state.rng = random.Random()
        app.state.redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        SERVING.holders[holder.model_name] = holder
        events.start()
        for each in (holder, *shadows):
            await asyncio.to_thread(each.refresh)
        # Everything alive now (the imports, the app, the model) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it, which otherwise
        # stalls every request in flight for tens of milliseconds.
        gc.freeze()
        stop, following = threading.Event(), threading.Event()
        threading.Thread(
            target=holder.follow, args=(snapshots, stop, following), name="notices", daemon=True
        ).start()
        for shadow in shadows:  # a challenger's new version may wait for a notice or a poll
            threading.Thread(
                target=shadow.follow, args=(snapshots, stop), name="shadow", daemon=True
            ).start()
        # Serve once the follower listens: what changes from then on reaches it by notice.
        await asyncio.to_thread(following.wait, 30.0)

        async def poll() -> None:
            while True:
                await asyncio.sleep(settings.api.model_poll_s)
                for each in (holder, *shadows):
                    await asyncio.to_thread(each.refresh)

        task = asyncio.create_task(poll())
        try:
            yield
        finally:
            task.cancel()
            stop.set()
            SERVING.holders.pop(holder.model_name, None)
            await asyncio.to_thread(events.close)
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # A worker gone: its live gauges (events buffered, Kafka up) no longer count.
                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    app = FastAPI(
        title="streamlearn",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for error, status in (
        (SnapshotNotFound, 404),
        (ArchiveError, 404),
        (SignatureError, 409),
        (StoreUnavailable, 503),
        (RedisError, 503),
        (SnapshotError, 409),
    ):
        app.add_exception_handler(error, _status(status))
    app.include_router(health.router)
    app.include_router(scoring.router)
    app.include_router(admin.router)
    app.include_router(dashboard.router)
    # The dashboard's pinned browser libraries (make vendor), from the API itself: no CDN.
    app.mount("/vendor", StaticFiles(directory=dashboard.VENDOR), name="vendor")
    # Starlette wraps the last one added outermost: RequestMetrics measures every request,
    # BodyLimit's 413s included.
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(RequestMetrics)
    return app


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field. The offending input is not echoed: it may be NaN or Infinity,
    which JSON cannot carry, and echoing it would turn a client's mistake into a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _status(code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if code >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


def served(app: FastAPI) -> RankHotPath:
    """The app as uvicorn serves it: /v1/rank's hot path in front of all of FastAPI's layers
    (api.hotpath), everything else through them."""
    return RankHotPath(app, app.state)


# Built from the environment; nothing connects until the app starts.
app = served(create_app())
