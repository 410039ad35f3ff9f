"""Bearer-token auth for every mutating endpoint (the token comes from settings)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="HSIG_API_TOKEN")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    # async: a plain def would run in FastAPI's thread pool, a thread hop per request.
    expected: str = request.app.state.settings.api_token
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


Authorized = Depends(require_token)
