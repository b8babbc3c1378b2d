"""API keys: an admin key for the model admin endpoints, optional scoring keys for the rest.

A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. No key where one is
needed: 401 (with ``WWW-Authenticate``); a key that is not the right one: 403. Keys are compared
in constant time. The admin key is separate from the scoring keys, so a storefront that can rank
cannot promote; with no admin key configured the admin endpoints answer 403 to everyone.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr
from starlette.datastructures import Headers

from api.deps import get_app_settings
from streamlearn.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <key>")


def presented_key(headers: Headers) -> str | None:
    """The key a request presents: its bearer token, else its ``X-API-Key``."""
    authorization = headers.get("authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if authorization and scheme and credentials and scheme.lower() == "bearer":
        return credentials
    return headers.get("x-api-key") or None


def accepted(presented: str, keys: list[SecretStr]) -> bool:
    given = presented.encode()
    # Every key is compared, so the time taken does not say which one came close.
    matches = [hmac.compare_digest(given, k.get_secret_value().encode()) for k in keys]
    return any(matches)


async def _presented(
    request: Request,
    # Read by presented_key, which /v1/rank's hot path shares; declared for the OpenAPI schema.
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> str | None:
    return presented_key(request.headers)


def _check(presented: str | None, keys: list[SecretStr], what: str) -> None:
    if presented is None:
        raise HTTPException(
            401, detail=f"{what} key required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not accepted(presented, keys):
        raise HTTPException(403, detail=f"not a valid {what} key")


async def require_scoring_key(
    presented: Annotated[str | None, Depends(_presented)],
    settings: Annotated[Settings, Depends(get_app_settings)],
) -> None:
    if settings.api.scoring_keys:
        _check(presented, settings.api.scoring_keys, "scoring")


async def require_admin_key(
    presented: Annotated[str | None, Depends(_presented)],
    settings: Annotated[Settings, Depends(get_app_settings)],
) -> None:
    if settings.api.admin_key is None:
        raise HTTPException(403, detail="the admin API is off: no admin key is configured")
    _check(presented, [settings.api.admin_key], "admin")


ScoringKey = Depends(require_scoring_key)
AdminKey = Depends(require_admin_key)
