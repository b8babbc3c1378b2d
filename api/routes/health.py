"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from api.deps import HolderDep, PublisherDep
from api.middleware import SERVING
from api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz(holder: HolderDep) -> Health:
    """Alive. Names the model and version being served, if any (a challenger promoted across
    names is served under the champion's name), and the examples it has learned: every one
    below ``offsets`` (per partition of the examples topic)."""
    current = holder.current
    return Health(
        status="ok",
        model=current.model_name if current else holder.model_name,
        model_version=current.version if current else None,
        served_as=holder.model_name,
        worker=os.getpid(),
        offsets={str(p): o for p, o in current.offsets.items()} if current else {},
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "No model yet, or Kafka unreachable."}},
)
async def readyz(holder: HolderDep, publisher: PublisherDep, response: Response) -> Readiness:
    """Ready: a model is loaded and the Kafka producer reaches the broker."""
    current = holder.current
    ready = current is not None and publisher.connected
    if not ready:
        response.status_code = 503
    return Readiness(
        ready=ready,
        model_version=current.version if current else None,
        kafka_connected=publisher.connected,
        events_buffered=publisher.pending(),
    )


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text format: requests by route and status, latency, the version served, swaps,
    events published, buffered and lost; with API_WORKERS, every worker's added up (the version
    served and swaps are this worker's)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(SERVING)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
