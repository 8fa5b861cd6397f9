"""Prometheus metrics, request ids and JSON logs (app/middleware.py records them per request).

Metrics are per process (prometheus-client's model), so they are module-level instruments.
With several uvicorn workers each process counts its own share; set PROMETHEUS_MULTIPROC_DIR
(an empty directory, before start) to have GET /metrics add up all live workers. Retraining jobs
run in their own processes, so their counts are read from the database at each scrape.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.tables import Allocation, RetrainJob

log = logging.getLogger("app.access")

REGISTRY = CollectorRegistry(auto_describe=True)
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    ProcessCollector(registry=REGISTRY)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "dfcl_http_requests",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "dfcl_http_request_duration_seconds",
    "Time from request in to response sent, by method, route template and status.",
    ["method", "route", "status"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
ALLOCATIONS = Counter(
    "dfcl_allocations", "Allocations stored (201 sent).", ["model_version"], registry=REGISTRY
)
CUSTOMERS = Counter(
    "dfcl_allocated_customers", "Customers in stored allocations.", registry=REGISTRY
)
BUDGET = Counter(
    "dfcl_allocated_budget",
    "Total budget of stored allocations (sum of budget_total).",
    registry=REGISTRY,
)
EXPECTED_COST = Counter(
    "dfcl_allocated_expected_cost", "Expected cost of stored allocations.", registry=REGISTRY
)
INFERENCE_SECONDS = Histogram(
    "dfcl_inference_seconds",
    "onnxruntime time per allocation.",
    buckets=_SECONDS,
    registry=REGISTRY,
)
SOLVER_SECONDS = Histogram(
    "dfcl_solver_seconds",
    "Budget solver time per allocation.",
    buckets=_SECONDS,
    registry=REGISTRY,
)
ACTIVE_MODEL = Gauge(
    "dfcl_active_model_info",
    "1 for the model version this process serves new allocations with.",
    ["version"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
IDEMPOTENT_REPLAYS = Counter(
    "dfcl_idempotent_replays",
    "Retried POSTs answered from their Idempotency-Key's stored response (nothing written).",
    ["route"],
    registry=REGISTRY,
)
RETRAIN_JOBS = Gauge(
    "dfcl_retrain_jobs",
    "Retraining jobs in the database by status (queued, running, succeeded, failed).",
    ["status"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)

_shown_model: list[str | None] = [None]
_retrain_statuses: set[str] = set()


def record_retrain_jobs(sessionmaker: Callable[[], Session]) -> None:
    """Set dfcl_retrain_jobs from the database (jobs run and finish in other processes)."""
    try:
        with sessionmaker() as session:
            stmt = select(RetrainJob.status, func.count()).group_by(RetrainJob.status)
            counts = {str(status): int(n) for status, n in session.execute(stmt).all()}
    except SQLAlchemyError as exc:  # /metrics must answer while the database is down
        log.warning("retrain job counts unavailable: %s", type(exc).__name__)
        return
    _retrain_statuses.update(counts)
    for status in _retrain_statuses:
        RETRAIN_JOBS.labels(status=status).set(counts.get(status, 0))


def record_active_model(version: str | None) -> None:
    """Point dfcl_active_model_info at `version` (cheap when unchanged)."""
    previous = _shown_model[0]
    if version == previous:
        return
    if previous is not None:
        ACTIVE_MODEL.labels(version=previous).set(0)
    if version is not None:
        ACTIVE_MODEL.labels(version=version).set(1)
    _shown_model[0] = version


def render_metrics() -> tuple[bytes, str]:
    """The exposition text: this process, or every worker's files in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- request ids and logs -------------------------------------------------------------------

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request being served (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update(
            {
                k: v
                for k, v in vars(record).items()
                if k not in _STANDARD_ATTRS and k != "color_message"
            }
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """dictConfig for `dfcl serve`: app and uvicorn loggers, JSON or text, with request ids."""
    text = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {"format": text},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": fmt,
                "filters": ["request_id"],
            }
        },
        "loggers": {
            name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
            for name in ("app", "uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def record_allocation(allocation: Allocation, timings_ms: dict[str, float]) -> None:
    """Business metrics of one allocation the client received."""
    ALLOCATIONS.labels(model_version=allocation.model_version).inc()
    CUSTOMERS.inc(allocation.n_customers)
    BUDGET.inc(max(allocation.budget_total, 0.0))
    EXPECTED_COST.inc(max(allocation.expected_cost, 0.0))
    if "infer" in timings_ms:
        INFERENCE_SECONDS.observe(timings_ms["infer"] / 1e3)
    if "solve" in timings_ms:
        SOLVER_SECONDS.observe(timings_ms["solve"] / 1e3)
