"""One job abstraction for every background job (retraining, allocation), local backend.

A job is a row (its table holds id, status, workdir and pid) plus a process running
`python -m <module> JOB_ID WORKDIR`. The row is the shared state: `launch` records the pid,
the job marks itself running and finally closes itself; the service's `fail_dead_jobs`
(services/retrain.py, services/allocation_jobs.py; liveness in services/job_process.py) closes
a job whose process died without saying so. Only the local backend exists: a child process of
the service on this host (the pid check assumes one host). A Ray backend would implement
`Backend.start` by submitting the same module as a Ray job and must then replace the pid check
by the Ray job's status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import begin_write
from app.services import allocation_jobs, retrain
from app.services.retrain import LOG_NAME
from app.tables import AllocationJob, RetrainJob

SETTINGS_NAME = "settings.json"


class Finish(Protocol):
    """Close a job still in progress with these column values; false if already closed."""

    def __call__(self, session: Session, job_id: uuid.UUID, **values: Any) -> bool: ...


@dataclass(frozen=True)
class JobKind:
    """What the runner needs to know about one kind of job."""

    name: str
    module: str  # run as `python -m module JOB_ID WORKDIR`
    table: type[RetrainJob] | type[AllocationJob]
    finish: Finish


RETRAIN = JobKind("retrain", "app.jobs.retrain", RetrainJob, retrain.finish)
ALLOCATION = JobKind("allocation", "app.jobs.allocation_job", AllocationJob, allocation_jobs.finish)


class Backend(Protocol):
    """Where a job's process runs; returns its pid (the liveness check reads it)."""

    def start(self, kind: JobKind, job_id: uuid.UUID, workdir: Path) -> int: ...


class LocalProcess:
    """The embedded default: a child process of the service on this host."""

    def start(self, kind: JobKind, job_id: uuid.UUID, workdir: Path) -> int:
        """Start the process with its output in WORKDIR/job.log; a thread reaps it."""
        with (workdir / LOG_NAME).open("ab") as log_file:
            process = subprocess.Popen(
                job_command(job_id, workdir, kind.module),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl+C of the service does not kill the job
            )
        # Waiting for it keeps the ended process from lingering as the service's zombie.
        threading.Thread(target=process.wait, name=f"{kind.name}-{job_id}", daemon=True).start()
        return process.pid


LOCAL = LocalProcess()


def job_command(job_id: uuid.UUID, workdir: Path, module: str = RETRAIN.module) -> list[str]:
    """The job's process: this interpreter running the job module (see `dfcl retrain-job`).

    The job id is on the command line, so the pid check can tell a reused pid from the job.
    """
    return [sys.executable, "-m", module, str(job_id), str(workdir)]


def launch(
    factory: sessionmaker[Session],
    settings: Settings,
    kind: JobKind,
    job_id: uuid.UUID,
    backend: Backend = LOCAL,
) -> None:
    """Start a queued job (after its row is committed) and record its pid.

    A job closed meanwhile (cancelled before it started) is not started.
    """
    table = kind.table
    with factory() as session:
        found = session.execute(
            select(table.status, table.workdir).where(table.id == job_id)
        ).one_or_none()
    if found is None or found.status != "queued":
        return
    workdir = Path(found.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        settings_file = workdir / SETTINGS_NAME
        settings_file.write_text(settings.model_dump_json())  # may hold a DB password
        settings_file.chmod(0o600)
        pid = backend.start(kind, job_id, workdir)
    except OSError as exc:
        with factory() as session, session.begin():
            kind.finish(session, job_id, status="failed", error=f"cannot start the job: {exc}")
        return
    with factory() as session, session.begin():
        begin_write(session)
        session.execute(
            update(kind.table)
            .where(kind.table.id == job_id, kind.table.pid.is_(None))
            .values(pid=pid)
        )


def read_settings(workdir: Path) -> Settings:
    """The service's settings as the launcher wrote them for the job."""
    return Settings.model_validate(json.loads((workdir / SETTINGS_NAME).read_text()))
