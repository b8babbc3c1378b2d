"""The FastAPI application. Run: ``uvicorn api.app:app`` or ``python -m api``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.routes import health, score
from streamlearn import __version__
from streamlearn.serving import ModelHolder
from streamlearn.settings import Settings, get_settings
from streamlearn.snapshots import open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        holder = ModelHolder(store, settings.model.name)
        app.state.holder = holder
        app.state.settings = settings
        await asyncio.to_thread(holder.refresh)

        async def poll() -> None:
            while True:
                await asyncio.sleep(settings.model_poll_s)
                await asyncio.to_thread(holder.refresh)

        task = asyncio.create_task(poll())
        yield
        task.cancel()

    app = FastAPI(title="streamlearn", version=__version__, lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.include_router(health.router)
    app.include_router(score.router)
    return app


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field. The offending input is not echoed: it may be NaN or Infinity,
    which JSON cannot carry, and echoing it would turn a client's mistake into a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


app = create_app()
