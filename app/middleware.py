"""ASGI middleware around every request, and the typed state its layers share.

`RequestState` is the one per-request side channel: the deadline (set by `RequestTimeouts`,
claimed by the session dependency before COMMIT), the stage timings (`ServerTiming` header) and
the stored allocation (counted in /metrics once its 201 is sent). Everything reaches it through
`request_state(scope)`, so no layer reads untyped attributes of `request.state`.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import (
    HTTP_REQUESTS,
    HTTP_SECONDS,
    IDEMPOTENT_REPLAYS,
    record_active_model,
    record_allocation,
    request_id,
)
from app.tables import Allocation

if TYPE_CHECKING:
    from app.limits import Deadline

log = logging.getLogger("app.access")

_STATE_KEY = "dfcl"  # key of the RequestState in the ASGI scope's "state" (= request.state)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")


@dataclass
class RequestState:
    """What the layers of one request tell each other (mutable: filled in as it runs)."""

    deadline: Deadline | None = None  # None when DFCL_REQUEST_TIMEOUT_S is off
    timings_ms: dict[str, float] = field(default_factory=dict)  # stage -> ms; empty: no header
    allocation: Allocation | None = None  # stored by this request, counted once 201 is sent


def request_state(scope: Scope) -> RequestState:
    """This request's state; `RequestContext` makes it as the request arrives."""
    state = scope.setdefault("state", {})
    found = state.get(_STATE_KEY)
    if not isinstance(found, RequestState):
        found = state[_STATE_KEY] = RequestState()
    return found


def _unstorable_url(scope: Scope) -> str | None:
    """Why the path or query cannot be stored or compared by the database (NUL, bad UTF-8)."""
    for part, raw in (("path", scope.get("raw_path") or b""), ("query", scope["query_string"])):
        decoded = unquote_to_bytes(raw if isinstance(raw, bytes) else raw.encode())
        if b"\x00" in decoded:
            return f"the URL {part} contains a NUL character (%00), which no database can store"
    return None


async def _send_json(send: Send, status: int, body: dict[str, str]) -> None:
    content = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


class RequestContext:
    """Outermost middleware: request id (X-Request-ID in and out), metrics, one log line each.

    It also answers what no route may see: a URL with a NUL character (422, on every database
    alike), and an unexpected exception (500 `{error, detail, request_id}`, logged with the
    request id) when no response has started yet.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        state = request_state(scope)
        started = perf_counter()
        status, replayed, started_response = 500, False, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, replayed, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                replayed = any(k == b"idempotent-replayed" for k, _ in message["headers"])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            bad_url = _unstorable_url(scope)
            if bad_url is not None:
                body = {"error": "InvalidInput", "detail": bad_url}
                await _send_json(send_with_id, 422, body)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error (request id %s)", rid)
            if started_response:
                raise  # too late for an error body: the client sees a cut-off response
            body = {
                "error": "InternalServerError",
                "detail": f"unexpected server error; quote request id {rid} to the operator "
                "(the server log has the details)",
                "request_id": rid,
            }
            await _send_json(send_with_id, 500, body)
        finally:
            elapsed = perf_counter() - started
            route = getattr(scope.get("route"), "path_format", None) or "<unmatched>"
            labels = {"method": scope["method"], "route": route, "status": str(status)}
            HTTP_REQUESTS.labels(**labels).inc()
            HTTP_SECONDS.labels(**labels).observe(elapsed)
            if replayed:
                IDEMPOTENT_REPLAYS.labels(route=route).inc()
            if status == 201 and state.allocation is not None:
                record_allocation(state.allocation, state.timings_ms)
            app_state = getattr(scope.get("app"), "state", None)  # set by the lifespan
            model = getattr(getattr(app_state, "registry", None), "active", None)
            record_active_model(model.version if model is not None else None)
            log.log(
                logging.DEBUG if scope["path"] in _QUIET_ROUTES else logging.INFO,
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1e3,
                extra={"status": status, "route": route, "duration_ms": round(elapsed * 1e3, 2)},
            )
            request_id.reset(token)


class ServerTiming:
    """Adds `Server-Timing` once the transaction has committed.

    Stages: encode, infer, solve, db (insert), commit, and total (request in -> response out,
    so total minus the stages is HTTP, JSON parsing/validation and response serialisation).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = perf_counter()
        state = request_state(scope)

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start" and state.timings_ms:
                total = {"total": (perf_counter() - started) * 1e3}
                stages = {**state.timings_ms, **total}
                value = ", ".join(f"{k};dur={v:.2f}" for k, v in stages.items())
                message["headers"] = [*message["headers"], (b"server-timing", value.encode())]
            await send(message)

        await self.app(scope, receive, send_with_timing)
