"""Idempotency-Key: a retried POST gets the original response instead of a second write.

The record (request fingerprint + status + JSON body sent) is inserted in the same transaction as
the work it describes, so a crash keeps both or neither. Its primary key (API key id, key) makes a
concurrent duplicate fail on insert; that request rolls back and answers from the stored record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import begin_write
from app.errors import Conflict
from app.tables import IdempotencyRecord

MAX_KEY_LENGTH = 255
REPLAY_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class IdempotentResponse:
    """The response to send: status, JSON bytes, and whether it replays a stored one."""

    status_code: int
    content: bytes
    replayed: bool = False


def fingerprint(method: str, path: str, body: BaseModel) -> str:
    """SHA-256 of method, path and the canonical body (parsed, defaults filled, keys sorted)."""
    canonical = json.dumps(
        [method.upper(), path, body.model_dump(mode="json")],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _stored(
    session: Session, principal: str, key: str, request_sha256: str, cutoff: datetime
) -> IdempotentResponse | None:
    """The live record's response, None if there is none, Conflict if the request differs."""
    row = session.get(IdempotencyRecord, (principal, key), populate_existing=True)
    if row is None:
        return None
    if row.created_at < cutoff:
        session.expunge(row)  # replaced below by a fresh record under the same key
        return None
    if row.request_sha256 != request_sha256:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used with a different request "
            f"(at {row.created_at.isoformat()}); use a new key for a new request"
        )
    return IdempotentResponse(row.status_code, row.response.encode(), replayed=True)


def run_once(
    session: Session,
    *,
    principal: str,
    key: str | None,
    request_sha256: str,
    ttl: timedelta,
    produce: Callable[[], tuple[int, bytes]],
) -> IdempotentResponse:
    """Replay the response stored under `key`, else run `produce` and store its response.

    `produce` does the work in `session` (not committed) and returns (status, JSON bytes).
    """
    if key is None:
        return IdempotentResponse(*produce())
    now = datetime.now(UTC)
    cutoff = now - ttl
    found = _stored(session, principal, key, request_sha256, cutoff)
    if found is not None:
        return found
    status, content = produce()
    begin_write(session)
    # Expired records of this caller go (including an expired one under this key).
    session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.created_at < cutoff
        )
    )
    session.add(
        IdempotencyRecord(
            principal=principal,
            key=key,
            request_sha256=request_sha256,
            status_code=status,
            response=content.decode(),
            created_at=now,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        # A concurrent request with the same key committed first: drop our work, answer as it.
        session.rollback()
        found = _stored(session, principal, key, request_sha256, cutoff)
        if found is None:
            raise
        return found
    return IdempotentResponse(status, content)
