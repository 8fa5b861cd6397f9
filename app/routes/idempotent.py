"""Route helper for POSTs that honour an `Idempotency-Key` header (allocations, outcomes)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.auth import Principal
from app.config import Settings
from app.services import idempotency

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=idempotency.MAX_KEY_LENGTH,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe POST: the same key and body get the original response and "
        "write nothing; the same key with another body is refused (409).",
    ),
]

IDEMPOTENCY_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"description": "Idempotency-Key already used with a different request"}
}


def respond_once(
    request: Request,
    session: Session,
    settings: Settings,
    principal: Principal,
    key: str | None,
    body: BaseModel,
    produce: Callable[[], tuple[int, bytes]],
) -> Response:
    """Run `produce` (status, JSON bytes) at most once per key; replays say so in a header."""
    request_sha256 = (
        "" if key is None else idempotency.fingerprint(request.method, request.url.path, body)
    )
    answer = idempotency.run_once(
        session,
        principal=principal.key_id,
        key=key,
        request_sha256=request_sha256,
        ttl=timedelta(hours=settings.idempotency_ttl_h),
        produce=produce,
    )
    headers = {idempotency.REPLAY_HEADER: "true"} if answer.replayed else None
    return Response(
        answer.content, answer.status_code, headers=headers, media_type="application/json"
    )
