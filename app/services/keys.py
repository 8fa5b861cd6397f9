"""API keys: create (the secret is shown once), list, revoke, and find the key a request sent."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput, NotFound
from app.tables import ApiKey

SCOPES = ("allocate", "read", "admin")
KEY_PREFIX = "dfcl_"
# 32 random bytes: a key cannot be guessed, so one unsalted SHA-256 is a safe fingerprint.
_KEY_BYTES = 32
_SHOWN_CHARS = 12


def key_sha256(key: str) -> str:
    """What the database stores instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Known scopes, deduplicated in SCOPES order; an unknown one is named."""
    given = list(scopes)
    unknown = [s for s in given if s not in SCOPES]
    if unknown or not given:
        raise InvalidInput(
            f"unknown scope(s) {unknown}; choose from {list(SCOPES)}"
            if unknown
            else f"give at least one scope from {list(SCOPES)}"
        )
    return [s for s in SCOPES if s in given]


def create(session: Session, scopes: Iterable[str], name: str = "") -> tuple[ApiKey, str]:
    """Record a new key and return it with its secret, which is not stored anywhere."""
    secret = KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
    row = ApiKey(
        id=uuid.uuid4(),
        name=name[:128],
        prefix=secret[:_SHOWN_CHARS],
        key_sha256=key_sha256(secret),
        scopes=check_scopes(scopes),
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return row, secret


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke(session: Session, ident: str) -> ApiKey:
    """Revoke by id or by the shown prefix (must match exactly one key)."""
    try:
        rows = [r for r in [session.get(ApiKey, uuid.UUID(ident))] if r is not None]
    except ValueError:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix == ident)))
    if len(rows) != 1:
        found = "no key" if not rows else f"{len(rows)} keys"
        raise NotFound(f"{found} with id or prefix {ident!r} (see `dfcl keys list`)")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.flush()
    return row


def find_active(session: Session, secret: str) -> ApiKey | None:
    """The unrevoked key whose hash matches; looked up by hash, so no secret is compared."""
    stmt = select(ApiKey).where(
        ApiKey.key_sha256 == key_sha256(secret), ApiKey.revoked_at.is_(None)
    )
    return session.scalar(stmt)
