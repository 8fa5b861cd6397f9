"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from app.schemas import Health, Readiness
from app.services import models

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers (no dependencies checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers and a model is loaded; 503 otherwise."""
    database, detail = True, None
    registry = request.app.state.registry
    try:
        with request.app.state.sessionmaker() as session:
            registry.sync(models.active_version(session))  # follow activations by others
    except SQLAlchemyError as exc:
        database, detail = False, f"database unreachable: {type(exc).__name__}"
    model = registry.active
    if model is None and detail is None:
        detail = registry.load_error or "no model version is active"
    ready = database and model is not None
    body = Readiness(
        ready=ready,
        database=database,
        model_version=model.version if model else None,
        detail=detail,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
