"""Dependencies the routes declare with ``Annotated``: what the app's lifespan put in its state.

All ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per
dependency per request for what is an attribute read."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

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


def _state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that reads ``app.state.<name>``, set by the app's lifespan."""

    async def read(request: Request) -> Any:
        return getattr(request.app.state, name)

    return read


get_holder = _state("holder")
get_app_settings = _state("settings")


async def get_served(holder: Annotated[ModelHolder, Depends(get_holder)]) -> Served:
    served = holder.current
    if served is None:
        raise HTTPException(503, detail=f"no snapshot of model {holder.model_name!r} yet")
    return served


@dataclass(frozen=True)
class Ranking:
    """What ``/v1/rank`` reads from the app's state, as one dependency: FastAPI resolves each
    dependency of a request on its own (a sixth of the route's time with six of them)."""

    served: Served
    settings: Settings
    publisher: Publisher
    clock: Clock
    rng: random.Random
    shadows: list[ModelHolder]  # the challengers' holders, scoring the candidates in shadow


async def get_ranking(request: Request) -> Ranking:
    state = request.app.state
    return Ranking(
        await get_served(state.holder),
        state.settings,
        state.publisher,
        state.clock,
        state.rng,
        state.shadows,
    )


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
ServedDep = Annotated[Served, Depends(get_served)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PublisherDep = Annotated[Publisher, Depends(_state("publisher"))]
RegistryDep = Annotated[Registry, Depends(_state("registry"))]
RankingDep = Annotated[Ranking, Depends(get_ranking)]
