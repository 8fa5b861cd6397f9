"""Domain errors carry their HTTP status; one handler renders every error as {error, detail}."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.features import FeatureError
from app.core.solver import InfeasibleBudget


class DomainError(Exception):
    """A failure the client can act on; `extra` adds machine-readable fields to the body."""

    status_code = 400

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
    return JSONResponse(jsonable_encoder(body), status)


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


def install(app: Any) -> None:
    """Register the handlers on a FastAPI app."""
    app.add_exception_handler(StarletteHTTPException, render_http)
    app.add_exception_handler(DomainError, render)
    for exc_type in CORE_STATUS:
        app.add_exception_handler(exc_type, render)
    app.add_exception_handler(RequestValidationError, render_validation)
