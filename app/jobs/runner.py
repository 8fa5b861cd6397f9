"""The local job backend: a retraining job runs as its own process on this host.

The job's row is the shared state: `launch` records the pid, the job marks itself running and
finally succeeded or failed; `services.retrain.fail_dead_jobs` fails a job whose process died
without saying so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import begin_write
from app.services.retrain import LOG_NAME, finish
from app.tables import RetrainJob

SETTINGS_NAME = "settings.json"


def job_command(job_id: uuid.UUID, workdir: Path) -> list[str]:
    """The job's process: this interpreter running the job module (see `dfcl retrain-job`)."""
    return [sys.executable, "-m", "app.jobs.retrain", str(job_id), str(workdir)]


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


def read_settings(workdir: Path) -> Settings:
    """The service's settings as the launcher wrote them for the job."""
    return Settings.model_validate(json.loads((workdir / SETTINGS_NAME).read_text()))
