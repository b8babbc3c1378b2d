"""The live dashboard, the model pages (HTML, no build step) and the monitor's figures."""

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

from api.deps import HolderDep, RegistryDep, SettingsDep
from api.middleware import REQUESTS
from api.routes.admin import ModelName
from api.schemas import problems
from api.security import ScoringKey
from streamlearn.board import Board
from streamlearn.registry import Registry

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE = STATIC / "dashboard.html"
VENDOR = STATIC / "vendor"


def _policy(page: str) -> str:
    """A Content-Security-Policy that lets the page's own inline script run (by its hash) and
    the API's own files (the charting library), and nothing else: no other origin, no
    framing."""
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (
        f"default-src 'none'; script-src 'self' 'sha256-{digest}'; "
        "style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _page(path: Path) -> tuple[str, dict[str, str]]:
    html = path.read_text()
    return html, {"Content-Security-Policy": _policy(html), "X-Content-Type-Options": "nosniff"}


_HTML, _HEADERS = _page(PAGE)
_MODEL_HTML, _MODEL_HEADERS = _page(STATIC / "model.html")

router = APIRouter(tags=["monitor"])


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_HTML, headers=_HEADERS)


@router.get("/models/{model}", response_class=HTMLResponse, include_in_schema=False)
async def model_page(model: ModelName) -> HTMLResponse:
    """A model's page: its lineage, promote, roll back and pin, two versions compared, the
    served version's largest weights (its data comes from the admin API, with the admin key)."""
    return HTMLResponse(_MODEL_HTML, headers=_MODEL_HEADERS)


@router.get("/v1/monitor", dependencies=[ScoringKey], responses=problems(401, 403, 503))
async def monitor(
    request: Request,
    holder: HolderDep,
    settings: SettingsDep,
    registry: RegistryDep,
    minutes: float = Query(180, gt=0, le=7 * 24 * 60, description="How far back the history goes."),
    points: int = Query(400, ge=10, le=5000, description="At most this many history points."),
) -> dict[str, Any]:
    """The monitor's latest figures (null until it has published), their history for charts
    (evenly thinned to ``points``), the recent alerts (newest first), the registry's moves
    (promotions, rollbacks, serving moves, pins) of the served name and model and the served
    model's checkpoints in that time (oldest first), this API's request count, and the version
    it serves."""
    board = Board(request.app.state.redis, settings.topic_prefix)
    since = time.time() - minutes * 60
    try:
        current, history, recent = await asyncio.to_thread(board.read, since, points)
    except RedisError as exc:
        raise HTTPException(503, detail=f"Redis unavailable: {exc}") from exc
    served = holder.current
    model = served.model_name if served else holder.model_name
    moves, checkpoints = await asyncio.to_thread(
        _timeline, registry, holder.model_name, model, since
    )
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
        "moves": moves,
        "checkpoints": checkpoints,
        "served": {
            "name": holder.model_name,
            "model": served.model_name if served else holder.model_name,
            "version": served.version if served else None,
            "swaps": holder.swaps,
        },
    }


CHECKPOINTS_SHOWN = 200
"""The served model's newest versions the charts mark: one every few seconds would be
thousands over the dashboard's six hours."""


def _timeline(
    registry: Registry, name: str, model: str, since: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The moves of the served name's and the served model's registries, and the served
    model's checkpoints, since ``since``; oldest first."""
    moves = sorted(
        (
            {"registry": each, **move.model_dump()}
            for each in dict.fromkeys((name, model))
            for move in registry.store.read_registry(each).moves
            if move.at >= since
        ),
        key=lambda m: m["at"],
    )
    checkpoints = [
        {"model": model, "version": meta["version"], "at": meta["created_at"]}
        for meta in registry.store.versions(model, limit=CHECKPOINTS_SHOWN)
        if meta["created_at"] >= since
    ]
    return moves, checkpoints
