"""Dependencies the routes declare with ``Annotated``: what the app's lifespan put in its state.

All ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per
dependency per request for what is an attribute read."""

from __future__ import annotations

import random
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request

from streamlearn.clock import Clock
from streamlearn.registry import Registry
from streamlearn.serving import ModelHolder, Served
from streamlearn.settings import Settings


class Publisher(Protocol):
    """Where the API sends events: :class:`api.publishing.EventPublisher`, or a test double."""

    connected: bool

    def start(self) -> None: ...
    def close(self, timeout_s: float = 10.0) -> None: ...
    def publish(self, topic: str, key: str, value: bytes) -> bool: ...
    def pending(self) -> int: ...


async def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


async def get_rng(request: Request) -> random.Random:
    rng: random.Random = request.app.state.rng
    return rng


async def get_served(holder: Annotated[ModelHolder, Depends(get_holder)]) -> Served:
    served = holder.current
    if served is None:
        raise HTTPException(503, detail=f"no snapshot of model {holder.model_name!r} yet")
    return served


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
ServedDep = Annotated[Served, Depends(get_served)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
ClockDep = Annotated[Clock, Depends(get_clock)]
RngDep = Annotated[random.Random, Depends(get_rng)]
