"""GET /metrics: Prometheus exposition (open unless DFCL_METRICS_REQUIRE_KEY)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.auth import require_scope
from app.observability import record_retrain_jobs, render_metrics


def make_router(require_key: bool) -> APIRouter:
    """The /metrics route, behind the `read` scope when asked to be."""
    router = APIRouter(tags=["observability"])
    dependencies = [Depends(require_scope("read"))] if require_key else []

    @router.get("/metrics", include_in_schema=False, dependencies=dependencies)
    def metrics(request: Request) -> Response:
        """Request counts and latencies, allocations, solver/inference time, model, jobs."""
        record_retrain_jobs(request.app.state.sessionmaker)
        content, media_type = render_metrics()
        return Response(content, media_type=media_type)

    return router
