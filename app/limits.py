"""Request limits as ASGI middleware: body size (413) and a deadline per request (504).

A timed-out request must not be half done: the 504 goes out only if the request's transaction
has not started committing, and a transaction whose request already got its 504 rolls back
(`Deadline.claim_commit`, called by the session dependency). Whichever comes first wins.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection, Mapping
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import RequestTimeout, render, render_http
from app.middleware import request_state

log = logging.getLogger(__name__)


class Deadline:
    """Who ends a request: its commit or its timeout, never both."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._state = "running"  # -> "committing" | "expired"

    def claim_commit(self) -> bool:
        """Called before COMMIT: false when the client was already told 504 (roll back)."""
        with self._lock:
            if self._state == "running":
                self._state = "committing"
            return self._state == "committing"

    def expire(self) -> bool:
        """Called at the deadline: false when a commit is under way (let it finish)."""
        with self._lock:
            if self._state == "running":
                self._state = "expired"
            return self._state == "expired"

    def error(self) -> RequestTimeout:
        return RequestTimeout(
            f"the request took longer than {self.timeout_s:g} s (DFCL_REQUEST_TIMEOUT_S); "
            "nothing was stored: retry, with the same Idempotency-Key if you sent one"
        )


class RequestTimeouts:
    """Answers 504 once a request outlives `timeout_s`; its work then finishes and rolls back.

    Paths in `exempt` (streamed uploads, which last as long as the transfer) have no deadline.
    """

    def __init__(self, app: ASGIApp, timeout_s: float, exempt: Collection[str] = ()) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0 or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        deadline = Deadline(self.timeout_s)
        request_state(scope).deadline = deadline
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if deadline._state == "expired":
                return  # the client already has its 504
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # The work is not cancelled (a thread cannot be): it runs on and its output is dropped.
        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        if not done and not started and deadline.expire():
            log.warning(
                "request timed out after %g s; its transaction will roll back", self.timeout_s
            )
            await render(_no_request, deadline.error())(scope, receive, send)
            try:
                await task
            except Exception:  # the client has its answer; keep the failure in the log
                log.exception("request failed after its timeout")
            return
        await task


_no_request: Any = None


class BodyLimit:
    """413 in the {error, detail} shape for bodies over `max_bytes`, declared or streamed.

    `per_path` gives some paths their own limit and the setting that names it: a streamed
    upload (written to disk block by block) may be far larger than a JSON body.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        per_path: Mapping[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path or {})

    def _error(self, max_bytes: int, setting: str) -> StarletteHTTPException:
        return StarletteHTTPException(
            413, f"request body is larger than {max_bytes} bytes ({setting})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self.per_path.get(
            scope["path"], (self.max_bytes, "DFCL_MAX_BODY_BYTES")
        )
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            await render_http(_no_request, self._error(max_bytes, setting))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # FastAPI re-raises it; errors.render_http answers
                    raise self._error(max_bytes, setting)
            return message

        await self.app(scope, limited_receive, send)
