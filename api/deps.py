"""Dependencies the routes declare with ``Annotated``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from streamlearn.serving import ModelHolder, Served
from streamlearn.settings import Settings


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_served(holder: Annotated[ModelHolder, Depends(get_holder)]) -> Served:
    served = holder.current
    if served is None:
        raise HTTPException(503, detail=f"no snapshot of model {holder.model_name!r} yet")
    return served


HolderDep = Annotated[ModelHolder, Depends(get_holder)]
ServedDep = Annotated[Served, Depends(get_served)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
