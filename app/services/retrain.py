"""Retraining job use cases: accept one job at a time, close it, read it back.

The job itself runs in `app/jobs/retrain.py`, started by the local backend `app/jobs/runner.py`;
this module never imports torch or training. A job whose process died without saying so is
marked failed the next time anyone looks (pid check), so one crash never blocks retraining.
"""

from __future__ import annotations

import csv
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import begin_write
from app.errors import Conflict, InvalidInput, NotFound
from app.schemas import RetrainCreate
from app.services.job_process import dead_reason
from app.tables import RetrainJob

log = logging.getLogger(__name__)

LOG_NAME = "job.log"
LOG_TAIL_LINES = 40


def _now() -> datetime:
    return datetime.now(UTC)


def finish(session: Session, job_id: uuid.UUID, **values: Any) -> bool:
    """Close a job still in progress (conditional update, so the first closer wins)."""
    begin_write(session)
    result = session.execute(
        update(RetrainJob)
        .where(RetrainJob.id == job_id, RetrainJob.in_progress)
        .values(in_progress=False, finished_at=_now(), **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail_dead_jobs(session: Session) -> None:
    """Mark in-progress jobs whose process is gone (or never started) as failed."""
    for job in session.scalars(select(RetrainJob).where(RetrainJob.in_progress)):
        reason = dead_reason(job.pid, job.id, job.created_at, _now())
        if reason is not None and finish(session, job.id, status="failed", error=reason):
            log.error("retraining job %s: %s", job.id, reason)
    session.flush()


TABLE_SUFFIXES = (".csv", ".parquet", ".pq")  # as training.data.tables reads them
OUTCOME_COLUMNS = ("treatment", "revenue", "cost")


def _table_columns(path: Path) -> list[str]:
    """Column names of a CSV (header line) or Parquet (footer schema) table; OSError/ValueError
    when it cannot be read as one. Reads no rows: the job validates the data itself."""
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise ValueError("the file is empty (no header line)")
        return [c.strip() for c in header]
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except pa.ArrowException as exc:
        raise ValueError(f"not a Parquet file ({type(exc).__name__})") from None


def check_tables(body: RetrainCreate) -> None:
    """Base and evaluation tables the request names exist and read as tables with the outcome
    columns, so a typo is a 422 now rather than a failed job a second later."""
    for name in ("base_rct", "base_obs", "eval_data"):
        given = getattr(body, name)
        if given is None:
            continue
        path = Path(given)
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise InvalidInput(
                f"{name}: {given!r} is not a table (use .csv or .parquet)", field=name
            )
        if not path.is_file():
            raise InvalidInput(f"{name}: {given!r}: file not found", field=name)
        try:
            columns = _table_columns(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{name}: {given!r} cannot be read: {exc}", field=name) from None
        missing = [c for c in OUTCOME_COLUMNS if c not in columns]
        if missing:
            raise InvalidInput(f"{name}: {given!r} lacks the columns {missing}", field=name)


def start(session: Session, settings: Settings, body: RetrainCreate) -> RetrainJob:
    """Record a queued job (409 if one is in progress); the caller launches it after commit.

    The method and config are checked by RetrainCreate (against TrainConfig), the tables here.
    """
    check_tables(body)
    fail_dead_jobs(session)
    running = session.scalar(select(RetrainJob).where(RetrainJob.in_progress))
    if running is not None:
        raise Conflict(
            f"retraining job {running.id} is {running.status}; one job runs at a time",
            job_id=str(running.id),
        )
    job_id = uuid.uuid4()
    assert settings.retrain_dir is not None  # filled in by Settings
    params = body.model_dump()
    params["method"] = params["method"] or settings.retrain_method
    params["margin"] = params["margin"] if params["margin"] is not None else settings.retrain_margin
    job = RetrainJob(
        id=job_id,
        status="queued",
        in_progress=True,
        created_at=_now(),
        params=params,
        workdir=str((settings.retrain_dir / str(job_id)).resolve()),
    )
    begin_write(session)
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # another request won the race for the one in-progress slot
        session.rollback()
        raise Conflict("a retraining job is already in progress; one job runs at a time") from None
    return job


def log_tail(workdir: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """Last lines of the job's log (progress and, on failure, the traceback)."""
    path = Path(workdir) / LOG_NAME
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


@dataclass(frozen=True)
class RetrainJobView:
    """A job as the API shows it in detail: its row and the tail of its log."""

    job: RetrainJob
    log_tail: list[str]


def read(session: Session, job_id: uuid.UUID) -> RetrainJobView:
    """A job (after failing it if its process died) with its log's tail, or 404."""
    fail_dead_jobs(session)
    job = session.get(RetrainJob, job_id)
    if job is None:
        raise NotFound(f"retraining job {job_id} does not exist")
    session.refresh(job)
    return RetrainJobView(job, log_tail(job.workdir))


def list_jobs(session: Session, *, limit: int) -> list[RetrainJob]:
    """Newest jobs first, without their logs."""
    fail_dead_jobs(session)
    stmt = select(RetrainJob).order_by(RetrainJob.created_at.desc()).limit(limit)
    return list(session.scalars(stmt))
