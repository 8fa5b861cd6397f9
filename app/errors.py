"""Domain errors carry their HTTP status; one handler renders every error as {error, detail}."""

from __future__ import annotations

import json
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
    body: dict[str, Any] = {"error": "RequestValidationError", "detail": detail, "errors": errors}
    if errors:
        loc = errors[0]["loc"]
        body["field"] = ".".join(str(p) for p in loc[1:] if p != "body") or None
        customer = _customer_at(getattr(exc, "body", None), loc)
        if customer is not None:
            body["customer_id"] = customer
    return JSONResponse(jsonable_encoder(body), 422)


def _customer_at(sent: Any, loc: list[Any]) -> str | None:
    """The id of the customer a validation error points into (body.customers[i]...), if any."""
    if len(loc) < 3 or loc[0] != "body" or not isinstance(loc[2], int):
        return None
    try:
        found = sent[loc[1]][loc[2]]["id"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(found, str) or "\x00" in found or not found.isprintable():
        return None  # not echoed: text the client cannot have meant (NUL, surrogates)
    return found


def render_http(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown route, body too large, ...) in the same {error, detail} shape."""
    assert isinstance(exc, StarletteHTTPException)
    error = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
    body = {"error": error, "detail": str(exc.detail)}
    return JSONResponse(body, exc.status_code, headers=exc.headers)


# OpenAPI: every error answer is an ErrorBody (app/schemas.py), whatever raised it.
UNEXPECTED_ERROR: dict[str, Any] = {
    "description": "Unexpected server error; the body names the request id the log has"
}


BODY_TOO_LARGE: dict[str, Any] = {"description": "Body larger than DFCL_MAX_BODY_BYTES"}
BAD_PARAMETER: dict[str, Any] = {"description": "A parameter is invalid (it is named)"}


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def declare_error_bodies(spec: dict[str, Any]) -> dict[str, Any]:
    """Give every 4xx/5xx response of `spec` the ErrorBody schema it really sends (in place).

    FastAPI documents its own validation-error shape (HTTPValidationError) and no body at all
    for the errors routes declare by description only; generated clients then read nothing.
    """
    from app.schemas import ErrorBody

    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.setdefault("500", dict(UNEXPECTED_ERROR))
            if "requestBody" in operation:  # app.limits.BodyLimit answers any body
                responses.setdefault("413", dict(BODY_TOO_LARGE))
            if operation.get("parameters"):  # RequestContext refuses a NUL in the URL
                responses.setdefault("422", dict(BAD_PARAMETER))
            for code, response in responses.items():
                sent = json.dumps(response.get("content"))
                if str(code)[0] in "45" and ("content" not in response or "Validation" in sent):
                    response["content"] = _error_content()  # /readyz's 503 keeps Readiness
    return spec


def document_errors(app: Any) -> None:
    """Make the OpenAPI document declare the {error, detail, ...} body every error sends."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_error_bodies(generate())
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
