"""The live dashboard (one HTML page, no build step) and the monitor's figures it polls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
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


def _policy(page: str) -> str:
    """A Content-Security-Policy that lets the page's own inline script run (by its hash) and
    nothing else: no other script, no other origin, no framing."""
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


_HTML = PAGE.read_text()
_HEADERS = {"Content-Security-Policy": _policy(_HTML), "X-Content-Type-Options": "nosniff"}

router = APIRouter(tags=["monitor"])


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_HTML, headers=_HEADERS)


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
            "name": holder.model_name,
            "model": served.model_name if served else holder.model_name,
            "version": served.version if served else None,
            "swaps": holder.swaps,
        },
    }
