"""GET /metrics: Prometheus exposition (open unless DFCL_METRICS_REQUIRE_KEY)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.auth import ReadKey
from app.observability import record_retrain_jobs, render_metrics


def metrics(request: Request) -> Response:
    """Request counts and latencies, allocations, solver/inference time, model, jobs."""
    record_retrain_jobs(request.app.state.sessionmaker)
    content, media_type = render_metrics()
    return Response(content, media_type=media_type)


def metrics_for_readers(request: Request, principal: ReadKey) -> Response:
    """`metrics` for callers with a `read` key."""
    return metrics(request)


def make_router(require_key: bool) -> APIRouter:
    """The /metrics route, behind the `read` scope when asked to be."""
    router = APIRouter(tags=["observability"])
    endpoint = metrics_for_readers if require_key else metrics
    router.add_api_route("/metrics", endpoint, methods=["GET"], include_in_schema=False)
    return router
