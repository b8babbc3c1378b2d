"""The live dashboard (one HTML page, no build step) and the monitor's figures it polls."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from redis.exceptions import RedisError

from api.deps import HolderDep, SettingsDep
from api.middleware import REQUESTS
from api.schemas import problems
from api.security import ScoringKey

PAGE = Path(__file__).resolve().parent.parent / "static" / "dashboard.html"

router = APIRouter(tags=["monitor"])


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text())


@router.get("/v1/monitor", dependencies=[ScoringKey], responses=problems(401, 403, 503))
async def monitor(
    request: Request,
    holder: HolderDep,
    settings: SettingsDep,
    minutes: float = Query(180, gt=0, le=7 * 24 * 60, description="How far back the history goes."),
    points: int = Query(400, ge=10, le=5000, description="At most this many history points."),
) -> dict[str, Any]:
    """The monitor's latest figures (null until it has published), their history for charts
    (evenly thinned to ``points``), the recent alerts (newest first), this API's request count,
    and the version it serves."""
    client = request.app.state.redis
    prefix = settings.topic_prefix
    since = f"{int((time.time() - minutes * 60) * 1000)}-0"

    def read() -> tuple[bytes | None, list[Any], list[bytes]]:
        return (
            client.get(f"{prefix}monitor"),
            client.xrange(f"{prefix}monitor-history", since, "+"),
            client.lrange(f"{prefix}alerts-recent", 0, -1),
        )

    try:
        current, entries, recent = await asyncio.to_thread(read)
    except RedisError as exc:
        raise HTTPException(503, detail=f"Redis unavailable: {exc}") from exc
    stride = max(1, -(-len(entries) // points))
    history = [orjson.loads(fields[b"point"]) for _, fields in entries[::stride]]
    served = holder.current
    return {
        "current": None if current is None else orjson.loads(current),
        "history": history,
        "recent_alerts": [orjson.loads(a) for a in recent],
        # The dashboard turns this count into a rate between two of its polls.
        "api_requests_total": sum(
            sample.value
            for metric in REQUESTS.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        ),
        "served": {
            "model": holder.model_name,
            "version": served.version if served else None,
            "swaps": holder.swaps,
        },
    }
