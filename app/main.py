"""create_app(settings): the FastAPI application, its lifespan and wiring.

Run with `dfcl serve` or `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from app import errors
from app.config import Settings
from app.db import SchemaNotReady, make_engine, make_sessionmaker, prepare_schema
from app.docs import install_docs
from app.limits import BodyLimit, RequestTimeouts
from app.middleware import RequestContext, ServerTiming
from app.registry import Registry
from app.routes import (
    allocation_jobs,
    allocations,
    budget_curve,
    campaigns,
    health,
    metrics,
    models,
    operation_id,
    outcomes,
    retrain,
)
from app.services import models as model_service
from app.ui import install as install_dashboard

log = logging.getLogger(__name__)

# Every /v1 route: a key is checked before anything else (app.auth's AllocateKey, ReadKey, ...).
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not decodable (e.g. invalid UTF-8)"},
    401: {"description": "Missing, unknown or revoked API key"},
    403: {"description": "The API key lacks the scope this endpoint needs"},
    503: {"description": "Database unreachable (Retry-After) or no model is active"},
    504: {"description": "Took longer than DFCL_REQUEST_TIMEOUT_S; nothing was stored"},
}

DESCRIPTION = """Chooses one marketing treatment per customer under a budget: an ONNX model
(trained with decision-focused causal learning) predicts revenue and cost per treatment, a
Lagrangian dual solver picks the assignment, and every allocation is stored for audit.
Errors are JSON `{"error": ..., "detail": ...}`."""


def _load_active(app: FastAPI) -> None:
    """Load the version the database calls active; a failure leaves the service live, unready."""
    with app.state.sessionmaker() as session:
        version = model_service.active_version(session)
    model = app.state.registry.sync(version)
    if version is None:
        log.warning("no model version is active; allocation endpoints answer 503")
    elif model is None:
        log.error("%s; allocation endpoints answer 503", app.state.registry.load_error)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Migrate (or refuse), connect, load the active model; dispose the pool on shutdown."""
    settings: Settings = app.state.settings
    engine = make_engine(settings)
    try:
        prepare_schema(engine, settings)
    except SchemaNotReady as exc:
        engine.dispose()
        log.error("cannot start: %s", exc)  # one line; `dfcl serve` checks before this
        raise SchemaNotReady(str(exc)) from None
    except SQLAlchemyError as exc:
        engine.dispose()
        # One line in the log, not the driver's traceback (`dfcl serve` checks before this).
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.error("cannot start: database %r: %s", engine.url, why)
        raise RuntimeError(f"cannot prepare the database {engine.url!r}: {why}") from None
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.registry = Registry(
        settings.models_dir,
        threads=settings.inference_threads,
        max_loaded=settings.max_loaded_models,
    )
    _load_active(app)
    # Startup objects (onnxruntime, SQLAlchemy, pydantic) live forever: keep them out of the
    # cyclic GC, whose full passes over them otherwise stall a request by ~60 ms.
    gc.freeze()
    try:
        yield
    finally:
        engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings default to the environment (DFCL_*)."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="DFCL allocation service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # served from packaged assets by install_docs, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    errors.install(app)
    install_docs(app)
    app.include_router(health.router)
    app.include_router(allocations.router, responses=AUTH_ERRORS)
    app.include_router(models.router, responses=AUTH_ERRORS)
    app.include_router(outcomes.router, responses=AUTH_ERRORS)
    app.include_router(retrain.router, responses=AUTH_ERRORS)
    app.include_router(budget_curve.router, responses=AUTH_ERRORS)
    app.include_router(allocation_jobs.uploads_router, responses=AUTH_ERRORS)
    app.include_router(allocation_jobs.router, responses=AUTH_ERRORS)
    app.include_router(campaigns.router, responses=AUTH_ERRORS)
    if settings.metrics_enabled:
        app.include_router(metrics.make_router(settings.metrics_require_key))
    install_dashboard(app)  # /ui pages and /ui/static (app/ui)
    errors.document_errors(app)
    # Last added runs first: request id/metrics/logs, then body limit, deadline, timings.
    app.add_middleware(ServerTiming)
    # Uploads stream to disk: their own size limit and no deadline (they last as long as the
    # transfer); everything else keeps the JSON body limit and the request timeout.
    uploads = allocation_jobs.uploads_router.prefix
    app.add_middleware(RequestTimeouts, timeout_s=settings.request_timeout_s, exempt=(uploads,))
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        per_path={uploads: (settings.max_upload_bytes, "DFCL_MAX_UPLOAD_BYTES")},
    )
    app.add_middleware(RequestContext)
    return app
