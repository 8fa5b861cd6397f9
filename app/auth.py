"""API-key authentication: one dependency per scope, declared as a route parameter.

Clients send `Authorization: Bearer <key>` (or `X-API-Key: <key>`). Keys live hashed in the
database (`dfcl keys create`), so every worker and the CLI agree and revocation is immediate.
An `admin` key may call every endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Literal

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.deps import SessionDep, SettingsDep
from app.errors import Forbidden, Unauthorized
from app.services import keys

Scope = Literal["allocate", "read", "admin"]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key itself")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (idempotency records are kept per key) and its scopes."""

    key_id: str
    name: str
    scopes: tuple[str, ...]


# With DFCL_AUTH_ENABLED=false every caller is this one.
ANONYMOUS = Principal(key_id="anonymous", name="anonymous", scopes=("admin",))


def _presented_key(
    bearer: HTTPAuthorizationCredentials | None, header_key: str | None
) -> str | None:
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    return header_key or None


@cache  # one callable per scope, so FastAPI runs it once per request however often declared
def require_scope(scope: Scope) -> Callable[..., Principal]:
    """A dependency that lets a request through only with a key holding `scope` (or admin)."""

    def check(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header_key: Annotated[str | None, Security(_header)],
    ) -> Principal:
        if not settings.auth_enabled:
            return ANONYMOUS
        secret = _presented_key(bearer, header_key)
        if secret is None:
            raise Unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (create one with "
                "`dfcl keys create --scope ...`)"
            )
        row = keys.find_active(session, secret)
        if row is None:
            raise Unauthorized("unknown or revoked API key")
        if scope not in row.scopes and "admin" not in row.scopes:
            raise Forbidden(
                f"this API key has scopes {list(row.scopes)}; {request.method} "
                f"{request.url.path} needs {scope!r}"
            )
        return Principal(key_id=str(row.id), name=row.name, scopes=tuple(row.scopes))

    check.__name__ = f"require_{scope}"
    return check


# What every route declares: a parameter `principal: ReadKey` (or AllocateKey, AdminKey).
AllocateKey = Annotated[Principal, Depends(require_scope("allocate"))]
ReadKey = Annotated[Principal, Depends(require_scope("read"))]
AdminKey = Annotated[Principal, Depends(require_scope("admin"))]
