"""Retraining jobs, service side: accept one job at a time, launch it in its own process, report.

The job itself (`app/services/retrain_job.py`, run as `python -m app.services.retrain_job`)
imports torch; this module never does, so the service stays torch-free. The job's row is the
shared state: the launcher records the pid, the job marks itself running and finally succeeded
or failed. A job whose process died without saying so is marked failed the next time anyone
looks (pid check), so one crash never blocks retraining for good.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import begin_write
from app.errors import Conflict, NotFound
from app.schemas import RetrainCreate
from app.tables import RetrainJob

log = logging.getLogger(__name__)

LOG_NAME = "job.log"
SETTINGS_NAME = "settings.json"
LOG_TAIL_LINES = 40
# A queued job whose process was never launched (service died first) is given up after this.
LAUNCH_GRACE = timedelta(seconds=120)


def job_command(job_id: uuid.UUID, workdir: Path) -> list[str]:
    """The job's process: this interpreter running the job module (see `dfcl retrain-job`)."""
    return [sys.executable, "-m", "app.services.retrain_job", str(job_id), str(workdir)]


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


def process_alive(pid: int, job_id: uuid.UUID) -> bool:
    """Is `pid` still this job's process? A reused pid running something else counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else: cannot tell more without /proc
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except (OSError, IndexError):
        return True  # no procfs: the signal check above is all we have
    return state != "Z" and str(job_id) in cmdline


def fail_dead_jobs(session: Session) -> None:
    """Mark in-progress jobs whose process is gone (or never started) as failed."""
    for job in session.scalars(select(RetrainJob).where(RetrainJob.in_progress)):
        if job.pid is None:
            if _now() - job.created_at > LAUNCH_GRACE:
                finish(session, job.id, status="failed", error="the job process never started")
        elif not process_alive(job.pid, job.id):
            reason = f"the job process (pid {job.pid}) ended without reporting a result"
            if finish(session, job.id, status="failed", error=reason):
                log.error("retraining job %s: %s", job.id, reason)
    session.flush()


def start(session: Session, settings: Settings, body: RetrainCreate) -> RetrainJob:
    """Record a queued job (409 if one is in progress); the caller launches it after commit."""
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


def launch(factory: sessionmaker[Session], settings: Settings, job_id: uuid.UUID) -> None:
    """Start the job's process (after the job row is committed) and record its pid.

    A thread waits for the process so it never lingers as a zombie of the service.
    """
    with factory() as session:
        job = session.get(RetrainJob, job_id)
        if job is None:
            return
        workdir = Path(job.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        settings_file = workdir / SETTINGS_NAME
        settings_file.write_text(settings.model_dump_json())  # may hold a DB password
        settings_file.chmod(0o600)
        with (workdir / LOG_NAME).open("ab") as log_file:
            process = subprocess.Popen(
                job_command(job_id, workdir),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl+C of the service does not kill training
            )
    except OSError as exc:
        with factory() as session, session.begin():
            finish(session, job_id, status="failed", error=f"cannot start the job: {exc}")
        return
    threading.Thread(target=process.wait, name=f"retrain-{job_id}", daemon=True).start()
    with factory() as session, session.begin():
        begin_write(session)
        session.execute(
            update(RetrainJob)
            .where(RetrainJob.id == job_id, RetrainJob.pid.is_(None))
            .values(pid=process.pid)
        )


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


def read(session: Session, job_id: uuid.UUID) -> dict[str, Any]:
    """A job as the API shows it (after failing it if its process died), or 404."""
    fail_dead_jobs(session)
    job = session.get(RetrainJob, job_id)
    if job is None:
        raise NotFound(f"retraining job {job_id} does not exist")
    session.refresh(job)
    fields = {c: getattr(job, c) for c in RetrainJob.__table__.columns.keys()}  # noqa: SIM118
    return {**fields, "log_tail": log_tail(job.workdir)}


def list_jobs(session: Session, *, limit: int) -> list[dict[str, Any]]:
    """Newest jobs first, without their logs."""
    fail_dead_jobs(session)
    stmt = select(RetrainJob).order_by(RetrainJob.created_at.desc()).limit(limit)
    return [
        {c: getattr(j, c) for c in RetrainJob.__table__.columns.keys()}  # noqa: SIM118
        for j in session.scalars(stmt)
    ]


def read_settings(workdir: Path) -> Settings:
    """The service's settings as the launcher wrote them for the job."""
    return Settings.model_validate(json.loads((workdir / SETTINGS_NAME).read_text()))
