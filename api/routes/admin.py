"""Model admin: versions, promote, roll back, pin. Admin key only."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import HolderDep, RegistryDep, SettingsDep
from api.schemas import AliasMove, ModelSummary, Promotion, VersionPage, VersionSet, problems
from api.security import AdminKey
from streamlearn.archive_query import connect
from streamlearn.errors import SnapshotNotFound
from streamlearn.evaluation import evaluate_versions
from streamlearn.explaining import moved, weights
from streamlearn.registry import CHAMPION, Registry
from streamlearn.serving import ModelHolder

ModelName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,63}$", examples=["ctr"])]

router = APIRouter(
    prefix="/v1/models",
    tags=["admin"],
    dependencies=[AdminKey],
    responses=problems(400, 401, 403, 404, 409, 413, 503),
)


MAX_EVALUATION_DAYS = 92
"""A quarter: more is a batch job (``streamlearn evaluate``), not a request."""

Limit = Annotated[int, Query(ge=1, le=500, description="How many of the newest versions.")]


def _summary(registry: Registry, model: str, limit: int = 20) -> ModelSummary:
    """Reads the registry's index, a page at a time: never every snapshot."""
    doc = registry.store.read_registry(model)
    listed = {m["version"]: m for m in registry.versions(model, limit)}
    listed |= {m["version"]: m for m in registry.named(model, doc) if m["version"] not in listed}
    return ModelSummary(
        model=model,
        aliases=doc.aliases,
        serves=doc.serves,
        pinned=doc.pins,
        challengers=doc.challengers,
        versions=[listed[v] for v in sorted(listed)],
        moves=[m.model_dump() for m in doc.moves],
    )


async def _serve_now(holder: ModelHolder, model: str) -> None:
    """This worker swaps before answering; the Redis notice tells the others."""
    current = holder.current
    if model in (holder.model_name, current.model_name if current else None):
        await asyncio.to_thread(holder.refresh)


@router.get("", response_model=list[ModelSummary])
def list_models(
    registry: RegistryDep, settings: SettingsDep, limit: Limit = 20
) -> list[ModelSummary]:
    """Every configured or stored model, with its aliases, pins, and its newest and named
    versions (with metrics)."""
    names = sorted({m.name for m in settings.models} | set(registry.store.models()))
    return [_summary(registry, name, limit) for name in names]


@router.get("/{model}", response_model=ModelSummary)
def show_model(model: ModelName, registry: RegistryDep, limit: Limit = 20) -> ModelSummary:
    return _summary(registry, model, limit)


@router.get("/{model}/versions", response_model=VersionPage)
def list_versions(
    model: ModelName,
    registry: RegistryDep,
    limit: Limit = 50,
    before: Annotated[int | None, Query(ge=1, description="Only versions below this.")] = None,
) -> VersionPage:
    """Every kept version, newest page first: follow ``next_before`` for older ones."""
    page = registry.versions(model, limit + 1, before)  # one more: is there an older page?
    older = len(page) > limit
    page = page[1:] if older else page
    return VersionPage(versions=page, next_before=page[0]["version"] if older else None)


@router.get("/{model}/versions/{version}")
def show_version(model: ModelName, version: str, registry: RegistryDep) -> dict[str, Any]:
    """One version's metadata: ``version`` is a number or an alias (``champion``)."""
    return registry.show(model, version)


Top = Annotated[int, Query(ge=1, le=1000, description="How many features.")]


@router.get("/{model}/weights")
async def largest_weights(
    model: ModelName,
    registry: RegistryDep,
    version: Annotated[str, Query(description="A number or an alias.")] = CHAMPION,
    top: Top = 20,
) -> dict[str, Any]:
    """A version's largest weights (by magnitude) and its bias: the features that move its
    scores most. ``version`` defaults to the champion (the newest version when none is set)."""

    def run() -> dict[str, Any]:
        number = _version(registry, model, version)
        w = weights(registry.store.get(model, number).model)
        return {
            "model": model,
            "version": number,
            "bias": w.bias,
            "features": len(w.by_feature),
            "weights": [{"feature": f, "weight": v} for f, v in w.largest(top)],
        }

    return await asyncio.to_thread(run)


@router.get("/{model}/compare")
async def compare(
    model: ModelName,
    registry: RegistryDep,
    a: Annotated[str, Query(description="The version compared from: a number or an alias.")],
    b: Annotated[str, Query(description="The version compared to.")],
    top: Top = 20,
) -> dict[str, Any]:
    """Two versions side by side: their metadata (samples, offsets, metrics, parent) and the
    features whose weights moved most from ``a`` to ``b``."""

    def run() -> dict[str, Any]:
        first, second = _version(registry, model, a), _version(registry, model, b)
        before, after = (registry.store.get(model, v) for v in (first, second))
        wa, wb = weights(before.model), weights(after.model)
        return {
            "model": model,
            "a": before.meta(),
            "b": after.meta(),
            "bias": {"a": wa.bias, "b": wb.bias},
            "moved": [
                {"feature": f, "a": x, "b": y, "change": y - x} for f, x, y in moved(wa, wb, top)
            ],
        }

    return await asyncio.to_thread(run)


def _version(registry: Registry, model: str, version: str) -> int:
    """A number or an alias as a number; the champion of a model that has none is its newest."""
    if version == CHAMPION:
        number = registry.served_version(model)
    else:
        number = registry.resolve(model, version)
    if number is None:
        raise SnapshotNotFound(f"model {model!r} has no version {version!r}")
    return number


@router.get("/{model}/evaluation")
async def evaluation(
    model: ModelName,
    registry: RegistryDep,
    settings: SettingsDep,
    start: Annotated[dt.date, Query(alias="from", description="First UTC day, ISO 8601.")],
    end: Annotated[dt.date, Query(alias="to", description="Last UTC day, ISO 8601.")],
    version: Annotated[
        list[str],
        Query(min_length=1, max_length=8, description="Numbers or aliases; repeat for more."),
    ],
) -> dict[str, Any]:
    """The versions scored on the archived examples of the period, without learning: per day
    and over the period, ROC AUC, log loss, calibration and conversion rate, and a reliability
    curve (what ``streamlearn evaluate`` prints and charts)."""
    if start > end:
        raise HTTPException(400, detail=f"from ({start}) is after to ({end})")
    if (end - start).days >= MAX_EVALUATION_DAYS:
        raise HTTPException(400, detail=f"at most {MAX_EVALUATION_DAYS} days at a time")

    def run() -> dict[str, Any]:
        con = connect(settings.store_url, settings.archive_options)
        return evaluate_versions(registry, con, model, version, start, end).as_json()

    return await asyncio.to_thread(run)


@router.post("/{model}/promote", response_model=AliasMove)
async def promote(
    model: ModelName, body: Promotion, registry: RegistryDep, holder: HolderDep
) -> AliasMove:
    """Serve ``version`` under this name (verified first; the champion alias moves there), or
    promote another ``model`` across names: its ``version``, else what it serves itself (its
    newest, as it learns). The API serves it at once; a rollback undoes it."""
    target = body.model or model
    if target == model and body.version is None:
        raise HTTPException(400, detail="promoting a model's own champion needs a version")
    await asyncio.to_thread(registry.serve, model, target, body.version)
    await _serve_now(holder, model)
    served, version = await asyncio.to_thread(registry.serving, model)
    return AliasMove(model=model, alias=CHAMPION, version=version, serves=served)


@router.post("/{model}/rollback", response_model=AliasMove)
async def rollback(model: ModelName, registry: RegistryDep, holder: HolderDep) -> AliasMove:
    """Undo the newest move of what is served under this name: back to the model served before
    a promotion across names, else the champion back at the version it named before."""
    served, version = await asyncio.to_thread(registry.step_back, model)
    await _serve_now(holder, model)
    return AliasMove(model=model, alias=CHAMPION, version=version, serves=served)


@router.post("/{model}/pin", response_model=ModelSummary)
def pin(model: ModelName, body: VersionSet, registry: RegistryDep) -> ModelSummary:
    """Keep ``version`` through retention."""
    registry.pin(model, body.version)
    return _summary(registry, model)


@router.post("/{model}/unpin", response_model=ModelSummary)
def unpin(model: ModelName, body: VersionSet, registry: RegistryDep) -> ModelSummary:
    registry.pin(model, body.version, pinned=False)
    return _summary(registry, model)
