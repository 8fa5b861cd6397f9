"""The allocation job (its own process): `run_batch` on the job's table, stored all or nothing.

Run as `python -m app.jobs.allocation_job JOB_ID WORKDIR`; the service launches it
(app/jobs/runner.py) after `POST /v1/allocation-jobs`, and its output goes to WORKDIR/job.log.

- The row is the shared state. The job marks itself running (with its pid), writes its phase,
  rows and progress in short transactions of their own (at most ~2 a second, best effort: a
  busy database delays a progress line, never the job) and polls `cancel_requested` at most
  every 0.5 s.
- It marks itself succeeded inside the transaction that stores the allocation and its
  decisions (`on_commit`), so "succeeded" and the stored allocation appear together; a
  cancellation that arrives before that commit rolls everything back.
- Bad input, an infeasible budget or any other error marks it failed with one line naming the
  cause; a SIGKILL leaves the row running until a reader's pid check fails it
  (services/allocation_jobs.py). Either way nothing was stored, and the scratch files go; a
  succeeded job keeps WORKDIR/decisions.parquet (GET .../decisions.parquet) and its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import Engine, create_engine, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.core.solver import InfeasibleBudget
from app.db import begin_write, database_url, make_engine, make_sessionmaker
from app.errors import DomainError
from app.jobs.allocate import BatchRequest, JobCancelled, Progress, run_batch
from app.jobs.runner import SETTINGS_NAME, read_settings
from app.services.allocation_jobs import DECISIONS_NAME, finish, remove_scratch, source_of
from app.tables import Allocation, AllocationJob

PROGRESS_EVERY_S = 0.5  # most frequent progress write (a new phase is written at once)
CANCEL_POLL_S = 0.5  # most frequent read of cancel_requested
QUICK_LOCK_WAIT_S = 0.25  # how long a progress write may wait for a lock before it is skipped
# Progress phases -> the names of run_batch's timings (BatchResult.timings_s).
PHASE_TIMINGS = {
    "reading": "read_score", "solving": "solve", "writing": "write_parquet", "storing": "store",
}  # fmt: skip


def say(message: str) -> None:
    """One timestamped line in job.log."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def one_line(text: str, limit: int = 2000) -> str:
    """An error as one line (job.error), whatever the exception's formatting."""
    return " ".join(text.split())[:limit]


def quick_engine(settings: Settings) -> Engine:
    """An engine for progress and cancel checks that gives up on a lock quickly."""
    url = database_url(settings)
    if url.get_backend_name() == "sqlite":
        return create_engine(url, connect_args={"timeout": QUICK_LOCK_WAIT_S})
    lock_ms = int(QUICK_LOCK_WAIT_S * 1000)
    return create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={"options": f"-c lock_timeout={lock_ms} -c statement_timeout=5000"},
    )


def single_file(path: Path) -> None:
    """Decisions written as a directory of parts (Ray engine) become one Parquet file, row
    group by row group, so the download is one file."""
    if not path.is_dir():
        return
    merged = path.with_name(f".{path.name}.merging")
    writer: pq.ParquetWriter | None = None
    try:
        for part in sorted(path.glob("*.parquet")):
            with pq.ParquetFile(part) as f:
                for batch in f.iter_batches(batch_size=65_536):
                    if writer is None:
                        writer = pq.ParquetWriter(merged, f.schema_arrow)
                    writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    shutil.rmtree(path)
    merged.rename(path)


class JobRow:
    """The job's callbacks into its row: progress, cancellation and the atomic success."""

    def __init__(self, quick: sessionmaker[Session], job_id: uuid.UUID, workdir: Path) -> None:
        self.quick = quick
        self.job_id = job_id
        self.workdir = workdir
        self._phase = ""
        self._written_at = float("-inf")
        self._entered: dict[str, float] = {}  # phase -> when it began (perf_counter)
        self._polled_at = float("-inf")
        self._cancel = False

    def progress(self, p: Progress) -> None:
        """Write phase, rows and progress (throttled; a skipped write is only a stale line)."""
        now = time.monotonic()
        if p.phase == self._phase and now - self._written_at < PROGRESS_EVERY_S:
            return
        if p.phase != self._phase:
            self._entered.setdefault(p.phase, time.perf_counter())
            say(f"{p.phase}: {p.rows_read} rows read, {p.rows_scored} scored")
        self._phase, self._written_at = p.phase, now
        try:
            with self.quick() as session, session.begin():
                session.execute(
                    update(AllocationJob)
                    .where(AllocationJob.id == self.job_id, AllocationJob.status == "running")
                    .values(
                        phase=p.phase,
                        rows_read=p.rows_read,
                        rows_scored=p.rows_scored,
                        progress=min(max(float(p.fraction), 0.0), 1.0),
                    )
                )
        except SQLAlchemyError as exc:
            say(f"progress not recorded ({type(exc).__name__}); going on")

    def cancelled(self) -> bool:
        """True once a cancellation was asked for (or the row was closed by someone else)."""
        now = time.monotonic()
        if not self._cancel and now - self._polled_at >= CANCEL_POLL_S:
            self._polled_at = now
            try:
                with self.quick() as session:
                    row = session.execute(
                        select(AllocationJob.status, AllocationJob.cancel_requested).where(
                            AllocationJob.id == self.job_id
                        )
                    ).one_or_none()
                self._cancel = row is None or row.cancel_requested or row.status != "running"
            except SQLAlchemyError as exc:
                say(f"cancellation not checked ({type(exc).__name__}); going on")
        return self._cancel

    def timings(self) -> dict[str, float]:
        """Seconds per phase so far, from the progress calls (named as run_batch names them),
        so a job reads succeeded with its timings already there."""
        marks = sorted(self._entered.items(), key=lambda item: item[1])
        ends = [t for _, t in marks[1:]] + [time.perf_counter()]
        return {
            PHASE_TIMINGS.get(phase, phase): round(end - start, 4)
            for (phase, start), end in zip(marks, ends, strict=True)
        }

    def commit(self, session: Session, allocation_id: uuid.UUID) -> None:
        """Inside the storing transaction: mark the job succeeded, or roll it all back when a
        cancellation came first."""
        allocation = session.get(Allocation, allocation_id)
        if allocation is None:
            raise RuntimeError(f"allocation {allocation_id} is not in the storing transaction")
        single_file(self.workdir / DECISIONS_NAME)
        summary = {
            "model_version": allocation.model_version,
            "multiplier": allocation.multiplier,
            "expected_revenue": allocation.expected_revenue,
            "expected_cost": allocation.expected_cost,
            "budget_total": allocation.budget_total,
            "exploration_rate": allocation.exploration_rate,
            "seed": allocation.seed,
            "n_explored": allocation.n_explored,
            "timings_s": self.timings(),  # replaced by run_batch's own once it returns
        }
        n = allocation.n_customers
        done = session.execute(
            update(AllocationJob)
            .where(
                AllocationJob.id == self.job_id,
                AllocationJob.status == "running",
                AllocationJob.cancel_requested.is_(False),
            )
            .values(
                status="succeeded",
                phase="done",
                progress=1.0,
                finished_at=datetime.now(UTC),
                allocation_id=allocation_id,
                n_customers=n,
                rows_read=n,
                rows_scored=n,
                result=summary,
            )  # fmt: skip
        ).rowcount  # type: ignore[attr-defined]
        if not done:
            asked = session.scalar(
                select(AllocationJob.cancel_requested).where(AllocationJob.id == self.job_id)
            )
            if asked:
                raise JobCancelled()
            raise RuntimeError("the job was closed by someone else meanwhile (pid check)")


def start(factory: sessionmaker[Session], job_id: uuid.UUID) -> dict[str, Any] | None:
    """Mark the queued job running with this pid; None if it was cancelled or closed first."""
    with factory() as session, session.begin():
        job = session.get(AllocationJob, job_id)
        if job is None or job.status != "queued":
            return None
        begin_write(session)
        if job.cancel_requested:
            finish(session, job_id, status="cancelled")
            return None
        started = session.execute(
            update(AllocationJob)
            .where(AllocationJob.id == job_id, AllocationJob.status == "queued")
            .values(
                status="running", phase="reading", started_at=datetime.now(UTC), pid=os.getpid()
            )
        ).rowcount  # type: ignore[attr-defined]
        return dict(job.params) if started else None


def batch_request(settings: Settings, params: dict[str, Any]) -> BatchRequest:
    """The accepted request (services/allocation_jobs.start filled in every default)."""
    seed = params.get("seed")
    return BatchRequest(
        source=source_of(settings, params),
        budget=float(params["budget"]),
        per_capita=bool(params["per_capita"]),
        model_version=params["model_version"],
        campaign=params.get("campaign"),
        exploration_rate=float(params["exploration_rate"]),
        seed=int(seed) if seed is not None else None,
        id_column=str(params["id_column"]),
        engine="ray" if params.get("engine") == "ray" else "local",
    )


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"terminated by signal {signum}")


def run(job_id: uuid.UUID, workdir: Path) -> None:
    """The whole job; every ending closes the row (a SIGKILL: the next reader does)."""
    signal.signal(signal.SIGTERM, _terminated)  # a polite stop still records why
    settings = read_settings(workdir)
    # Read once and removed at once: it may hold a database password, and a reader that sees
    # the job closed must find no scratch left (the rest is removed before the row closes).
    (workdir / SETTINGS_NAME).unlink(missing_ok=True)
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    quick = quick_engine(settings)
    row = JobRow(sessionmaker(quick), job_id, workdir)
    succeeded = False
    try:
        params = start(factory, job_id)
        if params is None:
            say(f"job {job_id} is no longer queued (cancelled?): nothing to do")
            return
        request = batch_request(settings, params)
        say(
            f"job {job_id}: {request.source}, budget {request.budget:g}"
            f"{' per customer' if request.per_capita else ''}, model {request.model_version}, "
            f"engine {request.engine}"
        )
        result = run_batch(
            request, settings=settings, workdir=workdir, store=True,
            on_progress=row.progress, cancelled=row.cancelled, on_commit=row.commit,
        )  # fmt: skip
        succeeded = True
        say(
            f"succeeded: allocation {result.allocation_id}, {result.n_customers} customers, "
            f"timings {result.timings_s}"
        )
        _record_timings(factory, job_id, result.timings_s, result.solver_stats)
    except JobCancelled:
        with factory() as session, session.begin():
            finish(session, job_id, status="cancelled")
        say("cancelled: nothing was stored")
    except (DomainError, InfeasibleBudget) as exc:  # the table, the budget or the model
        reason = one_line(str(exc))
        with factory() as session, session.begin():
            finish(session, job_id, status="failed", error=reason)
        say(f"failed: {reason}")
    except BaseException as exc:
        traceback.print_exc()
        reason = one_line(f"{type(exc).__name__}: {exc}")
        with factory() as session, session.begin():
            finish(session, job_id, status="failed", error=reason)
        say(f"failed: {reason}")
        raise SystemExit(1) from None
    finally:
        remove_scratch(workdir, keep_decisions=succeeded)
        quick.dispose()
        engine.dispose()


def _record_timings(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    timings_s: dict[str, float],
    solver_stats: dict[str, int],
) -> None:
    """Add per-phase timings to the succeeded job's result (known only after the commit)."""
    try:
        with factory() as session, session.begin():
            result = session.scalar(select(AllocationJob.result).where(AllocationJob.id == job_id))
            begin_write(session)
            session.execute(
                update(AllocationJob)
                .where(AllocationJob.id == job_id)
                .values(result={**(result or {}), "timings_s": timings_s, "solver": solver_stats})
            )
    except SQLAlchemyError as exc:  # the allocation is stored; only the timings are missing
        say(f"timings not recorded: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    run(uuid.UUID(sys.argv[1]), Path(sys.argv[2]))
