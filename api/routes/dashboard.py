"""The live dashboard (one HTML page, no build step) and the monitor's figures it polls."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from redis.exceptions import RedisError

from api.deps import HolderDep, SettingsDep
from api.middleware import REQUESTS
from api.schemas import problems
from api.security import ScoringKey
from streamlearn.board import Board

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
    board = Board(request.app.state.redis, settings.topic_prefix)
    try:
        current, history, recent = await asyncio.to_thread(
            board.read, time.time() - minutes * 60, points
        )
    except RedisError as exc:
        raise HTTPException(503, detail=f"Redis unavailable: {exc}") from exc
    served = holder.current
    return {
        "current": current,
        "history": history,
        "recent_alerts": recent,
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
