"""Allocation job use cases: accept uploads and jobs, read, list and cancel them.

The job itself runs in `app/jobs/allocation_job.py` (its own process, started by
`app/jobs/runner.py`) around `app.jobs.allocate.run_batch`; this module never imports it, so
the service loads neither pyarrow's readers nor Ray for it. Everything a job needs is checked
here before the 202, so a queued job fails only on its data (or the budget). A job whose process
died without saying so is failed the next time anyone looks (pid check, as for retraining).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import begin_write
from app.errors import Conflict, InvalidInput, NoActiveModel, NotFound
from app.schemas import AllocationJobCreate
from app.services import models
from app.services.job_process import dead_reason, process_alive
from app.tables import AllocationJob

log = logging.getLogger(__name__)

IN_PROGRESS = ("queued", "running")
DECISIONS_NAME = "decisions.parquet"
KEEP_NAMES = frozenset({DECISIONS_NAME, "job.log"})  # what a finished job's workdir keeps
UPLOADS = "uploads"
UploadFormat = Literal["parquet", "csv"]
UPLOAD_FORMATS: tuple[UploadFormat, ...] = ("parquet", "csv")
# Content types that say the format when the query does not.
CONTENT_TYPES: dict[str, UploadFormat] = {
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "text/csv": "csv",
    "application/csv": "csv",
}
TABLE_SUFFIXES = (".parquet", ".pq", ".csv")  # what the job reads (app/jobs/allocate.py)
PARQUET_MAGIC = b"PAR1"
WRITE_BYTES = 1 << 20  # uploads are written in blocks of this size, off the event loop


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------- uploads


def uploads_dir(settings: Settings) -> Path:
    assert settings.jobs_dir is not None  # filled in by Settings
    return settings.jobs_dir / UPLOADS


def source_of(settings: Settings, params: dict[str, Any]) -> Path:
    """The table a job reads: its resolved server path, or its upload's file."""
    if params.get("path"):
        return Path(params["path"])
    upload_id = uuid.UUID(str(params["upload_id"]))
    found = upload_file(settings, upload_id)
    if found is None:
        raise InvalidInput(f"upload_id: upload {upload_id} no longer exists", field="upload_id")
    return found


def upload_file(settings: Settings, upload_id: uuid.UUID) -> Path | None:
    """The stored file of an upload, or None when there is none (a UUID cannot escape the dir)."""
    for fmt in UPLOAD_FORMATS:
        path = uploads_dir(settings) / f"{upload_id}.{fmt}"
        if path.is_file():
            return path
    return None


def upload_format(query: str | None, content_type: str | None) -> UploadFormat:
    """The upload's format: the `format` query parameter, else the Content-Type."""
    if query is not None:
        if query not in UPLOAD_FORMATS:
            raise InvalidInput(f"format: must be parquet or csv, got {query!r}", field="format")
        return query
    media = (content_type or "").split(";")[0].strip().lower()
    if media in CONTENT_TYPES:
        return CONTENT_TYPES[media]
    raise InvalidInput(
        "format: say which format the body is: ?format=parquet or ?format=csv, or "
        "Content-Type application/vnd.apache.parquet or text/csv",
        field="format",
    )


@dataclass(frozen=True)
class Upload:
    upload_id: uuid.UUID
    format: UploadFormat
    bytes: int


async def save_upload(
    chunks: AsyncIterator[bytes], settings: Settings, fmt: UploadFormat
) -> Upload:
    """Stream a request body to <jobs_dir>/uploads/<id>.<format>, block by block.

    The body is never held in memory; it is written under a temporary name and renamed only
    when complete (and, for Parquet, framed by the PAR1 magic), so a job never sees half a file.
    """
    directory = uploads_dir(settings)
    await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
    upload_id = uuid.uuid4()
    final = directory / f"{upload_id}.{fmt}"
    partial = directory / f".{upload_id}.{fmt}.part"
    size = 0
    try:
        async with await anyio.open_file(partial, "wb") as handle:
            block = bytearray()
            async for chunk in chunks:
                block += chunk
                size += len(chunk)
                if len(block) >= WRITE_BYTES:
                    await handle.write(bytes(block))
                    block.clear()
            await handle.write(bytes(block))
        if size == 0:
            raise InvalidInput("the upload is empty: send the file as the request body")
        if fmt == "parquet" and not await anyio.to_thread.run_sync(_framed_parquet, partial, size):
            raise InvalidInput(
                "the upload is not a Parquet file (no PAR1 magic at its start and end); "
                "send CSV with ?format=csv"
            )
        await anyio.to_thread.run_sync(partial.rename, final)
    finally:
        await anyio.to_thread.run_sync(lambda: partial.unlink(missing_ok=True))
    return Upload(upload_id, fmt, size)


def _framed_parquet(path: Path, size: int) -> bool:
    """Parquet files start and end with PAR1: refuse anything else before a job reads it."""
    if size < 2 * len(PARQUET_MAGIC):
        return False
    with path.open("rb") as f:
        head = f.read(len(PARQUET_MAGIC))
        f.seek(-len(PARQUET_MAGIC), os.SEEK_END)
        return head == PARQUET_MAGIC and f.read() == PARQUET_MAGIC


# ------------------------------------------------------------------------------ accepting


def _holds_table(path: Path) -> bool:
    """A table file, or a directory with at least one (hidden and _-prefixed ones skipped)."""
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if not path.is_dir():
        return False
    for found in path.rglob("*"):
        hidden = any(p.startswith((".", "_")) for p in found.relative_to(path).parts)
        if found.suffix.lower() in TABLE_SUFFIXES and not hidden and found.is_file():
            return True
    return False


def server_path(settings: Settings, path: str) -> Path:
    """`path` resolved (symlinks too) and under a configured root, else 422 naming the field.

    Outside the roots the answer never depends on whether the path exists, so the endpoint
    cannot be used to probe the server's file system.
    """
    roots = settings.batch_input_roots
    if not roots:
        raise InvalidInput(
            "path: server paths are disabled (DFCL_BATCH_INPUT_ROOTS is empty); upload the "
            "table with POST /v1/uploads and give its upload_id",
            field="path",
        )
    try:
        resolved = Path(path).resolve()
        allowed = any(resolved.is_relative_to(root.resolve()) for root in roots)
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops, too long
        allowed = False
    if not allowed:
        raise InvalidInput(
            "path: not under a directory the server allows (DFCL_BATCH_INPUT_ROOTS)",
            field="path",
        )
    try:
        found = _holds_table(resolved)
    except OSError as exc:
        raise InvalidInput(f"path: {path} cannot be read: {exc.strerror}", field="path") from None
    if not found:
        raise InvalidInput(
            f"path: {path} is neither a .parquet/.csv file nor a directory holding one",
            field="path",
        )
    return resolved


def _model_version(session: Session, version: str | None) -> str:
    """The version the job will use, fixed now so a later activation does not change it."""
    if version is not None:
        return models.get_version(session, version).version
    active = models.active_version(session)
    if active is None:
        raise NoActiveModel(
            "no model version is active; name model_version or activate one "
            "(POST /v1/models/{version}/activate)"
        )
    return active


def start(session: Session, settings: Settings, body: AllocationJobCreate) -> AllocationJob:
    """Check the request and record a queued job; the caller launches it after commit."""
    path = server_path(settings, body.path) if body.path is not None else None
    if body.upload_id is not None and upload_file(settings, body.upload_id) is None:
        raise InvalidInput(
            f"upload_id: no upload {body.upload_id} (POST /v1/uploads first)", field="upload_id"
        )
    engine = body.engine or settings.batch_engine
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise InvalidInput(
            "engine: ray is not installed on the server (pip install 'dfcl[scale]')",
            field="engine",
        )
    rate = body.exploration_rate
    params: dict[str, Any] = {
        **body.model_dump(mode="json"),
        "path": str(path) if path is not None else None,  # resolved: what the job reads
        "model_version": _model_version(session, body.model_version),
        "exploration_rate": settings.exploration_rate if rate is None else rate,
        "engine": engine,
    }
    job_id = uuid.uuid4()
    assert settings.jobs_dir is not None  # filled in by Settings
    job = AllocationJob(
        id=job_id,
        status="queued",
        phase="queued",
        created_at=_now(),
        params=params,
        workdir=str((settings.jobs_dir / str(job_id)).resolve()),
        rows_read=0,
        rows_scored=0,
        progress=0.0,
        cancel_requested=False,
    )
    begin_write(session)
    session.add(job)
    session.flush()
    return job


# ------------------------------------------------------------------------ closing and reading


def finish(session: Session, job_id: uuid.UUID, **values: Any) -> bool:
    """Close a job still in progress (conditional update, so the first closer wins)."""
    begin_write(session)
    result = session.execute(
        update(AllocationJob)
        .where(AllocationJob.id == job_id, AllocationJob.status.in_(IN_PROGRESS))
        .values(finished_at=_now(), **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def remove_scratch(workdir: Path, *, keep_decisions: bool) -> None:
    """Delete a finished job's scratch files (and its settings copy, which may hold a DB
    password); the log stays, and the decisions Parquet too when the job succeeded."""
    keep = KEEP_NAMES if keep_decisions else KEEP_NAMES - {DECISIONS_NAME}
    try:
        entries = list(workdir.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def fail_dead_jobs(session: Session) -> None:
    """Close in-progress jobs whose process is gone (or never started): failed, or cancelled
    when a cancellation was asked for. Nothing of theirs was stored (all or nothing)."""
    stmt = select(AllocationJob).where(AllocationJob.status.in_(IN_PROGRESS))
    for job in session.scalars(stmt):
        reason = dead_reason(job.pid, job.id, job.created_at, _now())
        if reason is None:
            continue
        status = "cancelled" if job.cancel_requested else "failed"
        if finish(session, job.id, status=status, error=None if job.cancel_requested else reason):
            log.error("allocation job %s: %s", job.id, reason)
            remove_scratch(Path(job.workdir), keep_decisions=False)
    session.flush()


def read(session: Session, job_id: uuid.UUID) -> AllocationJob:
    """A job (after closing it if its process died), or 404."""
    fail_dead_jobs(session)
    job = session.get(AllocationJob, job_id)
    if job is None:
        raise NotFound(f"allocation job {job_id} does not exist")
    session.refresh(job)
    return job


def list_page(
    session: Session, *, limit: int, offset: int
) -> tuple[list[AllocationJob], int | None]:
    """Jobs newest first; returns the page and the next offset."""
    fail_dead_jobs(session)
    stmt = (
        select(AllocationJob)
        .order_by(AllocationJob.created_at.desc(), AllocationJob.id)
        .offset(offset)
        .limit(limit + 1)  # one extra row says "more exist"
    )
    rows = list(session.scalars(stmt))
    return rows[:limit], (offset + limit if len(rows) > limit else None)


def cancel(session: Session, job_id: uuid.UUID) -> AllocationJob:
    """Ask a job to stop (409 once it finished). A job without a live process is closed as
    cancelled at once; a running one stops at its next check (at most ~0.5 s apart) and
    rolls back, so it stores nothing, unless it has committed first (then this is a 409)."""
    job = session.get(AllocationJob, job_id)
    if job is None:
        raise NotFound(f"allocation job {job_id} does not exist")
    session.refresh(job)
    if job.status not in IN_PROGRESS:
        raise Conflict(f"allocation job {job_id} already {job.status}", status=job.status)
    alive = job.pid is not None and process_alive(job.pid, job.id)
    if alive:
        begin_write(session)
        asked = session.execute(
            update(AllocationJob)
            .where(AllocationJob.id == job_id, AllocationJob.status.in_(IN_PROGRESS))
            .values(cancel_requested=True)
        ).rowcount  # type: ignore[attr-defined]
    else:  # not started yet (its process will see the row closed and exit) or already dead
        asked = finish(session, job_id, status="cancelled", cancel_requested=True)
        if asked:
            remove_scratch(Path(job.workdir), keep_decisions=False)
    session.flush()
    session.refresh(job)
    if not asked:  # it finished between our read and our write
        raise Conflict(f"allocation job {job_id} already {job.status}", status=job.status)
    return job


def decisions_file(session: Session, job_id: uuid.UUID) -> Path:
    """The decisions Parquet of a succeeded job (409 before, 404 if the file was removed)."""
    job = read(session, job_id)
    if job.status != "succeeded":
        raise Conflict(
            f"allocation job {job_id} is {job.status}; its decisions exist once it succeeded",
            status=job.status,
        )
    path = Path(job.workdir) / DECISIONS_NAME
    if not path.is_file():
        raise NotFound(f"the decisions file of allocation job {job_id} no longer exists")
    return path
