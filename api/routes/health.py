from __future__ import annotations

from fastapi import APIRouter

from api.deps import HolderDep
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(holder: HolderDep) -> Health:
    """Alive. Names the version being served, if any."""
    current = holder.current
    return Health(
        status="ok", model=holder.model_name, model_version=current.version if current else None
    )
