"""Domain errors carry their HTTP status; one handler renders every error as {error, detail}."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.features import FeatureError
from app.core.solver import InfeasibleBudget

log = logging.getLogger(__name__)


class DomainError(Exception):
    """A failure the client can act on; `extra` adds machine-readable fields to the body."""

    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.extra = extra


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class InvalidInput(DomainError):
    status_code = 422


class InvalidModel(DomainError):
    """A model directory that must not be served: missing files, load failure, wrong shapes."""

    status_code = 422


class TooManyCustomers(DomainError):
    status_code = 413


class NoActiveModel(DomainError):
    status_code = 503


class Unauthorized(DomainError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(DomainError):
    """A valid API key without the scope the endpoint needs."""

    status_code = 403


class RequestTimeout(DomainError):
    """The request ran past DFCL_REQUEST_TIMEOUT_S; its transaction was rolled back."""

    status_code = 504


class ModelOutputInvalid(DomainError):
    """The model produced NaN/inf: a broken model, not a client mistake."""

    status_code = 500


# Core (numpy) errors know no HTTP; their status lives here.
CORE_STATUS: dict[type[Exception], int] = {InfeasibleBudget: 422, FeatureError: 422}


def render(request: Request, exc: Exception) -> JSONResponse:
    """Domain and core errors -> JSON {"error", "detail", ...extra} with the right status."""
    if isinstance(exc, DomainError):
        status, extra = exc.status_code, exc.extra
    else:
        status, extra = CORE_STATUS[type(exc)], {}
    if isinstance(exc, InfeasibleBudget):
        extra = {"min_budget": exc.min_budget}
    body = {"error": type(exc).__name__, "detail": str(exc), **extra}
    return JSONResponse(jsonable_encoder(body), status, headers=getattr(exc, "headers", None))


# Connection-level failures: the database is down or unreachable, not the request's fault.
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeout)
RETRY_AFTER_S = 5


def render_database(request: Request, exc: Exception) -> JSONResponse:
    """Database unreachable -> 503 with Retry-After; the request's transaction was rolled back."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    log.error("database unavailable: %s: %s", type(exc).__name__, reason[0] if reason else "")
    body = {
        "error": "DatabaseUnavailable",
        "detail": "the database is unreachable or failing; nothing was stored, retry later",
    }
    return JSONResponse(body, 503, headers={"Retry-After": str(RETRY_AFTER_S)})


def render_validation(request: Request, exc: Exception) -> JSONResponse:
    """Request validation -> 422 {"error", "detail", "errors"} naming each bad field."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]) + (
        "; ..." if len(errors) > 5 else ""
    )
    body = {"error": "RequestValidationError", "detail": detail, "errors": errors}
    return JSONResponse(body, 422)


def render_http(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown route, body too large, ...) in the same {error, detail} shape."""
    assert isinstance(exc, StarletteHTTPException)
    error = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
    body = {"error": error, "detail": str(exc.detail)}
    return JSONResponse(body, exc.status_code, headers=exc.headers)


# OpenAPI: the shape every error really has (FastAPI would document its own 422 shape).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "Error class, e.g. InvalidInput"},
        "detail": {"type": "string", "description": "What is wrong, naming the culprit"},
        "errors": {
            "type": "array",
            "description": "Validation errors: loc, msg, type per bad field",
            "items": {"type": "object"},
        },
    },
    "additionalProperties": True,
}


def document_errors(app: Any) -> None:
    """Make the OpenAPI's validation-error schema the {error, detail, errors} actually sent."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec: dict[str, Any] = generate()
            schemas = spec.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = ERROR_SCHEMA
        return app.openapi_schema  # type: ignore[no-any-return]

    app.openapi = openapi


def install(app: Any) -> None:
    """Register the handlers on a FastAPI app."""
    app.add_exception_handler(StarletteHTTPException, render_http)
    app.add_exception_handler(DomainError, render)
    for exc_type in CORE_STATUS:
        app.add_exception_handler(exc_type, render)
    app.add_exception_handler(RequestValidationError, render_validation)
    for exc_type in DATABASE_DOWN:
        app.add_exception_handler(exc_type, render_database)
