"""/v1/uploads and /v1/allocation-jobs: one budget across a whole customer table, in the
background; the result is an ordinary allocation (GET /v1/allocations/{id})."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.requests import ClientDisconnect

from app.auth import AllocateKey, Principal, ReadKey
from app.deps import SessionDep, SettingsDep
from app.errors import InvalidInput
from app.jobs import runner
from app.routes.allocations import MAX_OFFSET
from app.routes.idempotent import IDEMPOTENCY_ERRORS, IdempotencyKey, respond_once
from app.schemas import AllocationJobCreate, AllocationJobPage, AllocationJobRead, UploadRead
from app.services import allocation_jobs
from app.visibility import is_admin, public_params, redact_text

PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}

uploads_router = APIRouter(prefix="/v1/uploads", tags=["allocation jobs"])
router = APIRouter(prefix="/v1/allocation-jobs", tags=["allocation jobs"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown job"}}


def _shown(out: AllocationJobRead, principal: Principal) -> AllocationJobRead:
    """A server `path` and raw error text are for admin keys; others see the error redacted."""
    if is_admin(principal):
        return out
    return out.model_copy(
        update={"params": public_params(out.params), "error": redact_text(out.error)}
    )


@uploads_router.post(
    "",
    status_code=201,
    response_model=UploadRead,
    responses={
        413: {"description": "Body larger than DFCL_MAX_UPLOAD_BYTES"},
        422: {"description": "Unknown format, empty body, or not Parquet (PAR1 magic)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The customer table file itself, streamed (not multipart).",
            "content": {PARQUET_MEDIA_TYPE: _BINARY, "text/csv": _BINARY},
        }
    },
)
async def upload_table(
    request: Request,
    principal: AllocateKey,
    settings: SettingsDep,
    format: Annotated[
        Literal["parquet", "csv"] | None,
        Query(description="parquet or csv; default: from the Content-Type"),
    ] = None,
) -> UploadRead:
    """Stream a customer table to the server's disk (never held in memory); use its
    `upload_id` in POST /v1/allocation-jobs."""
    fmt = allocation_jobs.upload_format(format, request.headers.get("content-type"))
    try:
        saved = await allocation_jobs.save_upload(request.stream(), settings, fmt)
    except ClientDisconnect:  # nothing kept; the client is gone, this answer is for the log
        raise InvalidInput("the upload was interrupted; nothing was kept") from None
    return UploadRead(upload_id=saved.upload_id, format=saved.format, bytes=saved.bytes)


@router.post(
    "",
    status_code=202,
    response_model=AllocationJobRead,
    operation_id="create_allocation_job",
    responses={
        404: {"description": "Unknown model version"},
        422: {
            "description": "Invalid body: budget < 0, rate outside [0, 1], both or neither of "
            "path and upload_id, a path outside DFCL_BATCH_INPUT_ROOTS, an unknown upload"
        },
        503: {"description": "No model is active"},
        **IDEMPOTENCY_ERRORS,
    },
)
def create_job(
    body: AllocationJobCreate,
    request: Request,
    background: BackgroundTasks,
    session: SessionDep,
    settings: SettingsDep,
    principal: AllocateKey,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue a job; its process starts once the job is committed. Follow it with GET."""

    def produce() -> tuple[int, bytes]:
        job = allocation_jobs.start(session, settings, body)
        # Background tasks run after the response, i.e. after the session committed; a job
        # rolled back meanwhile (idempotency race) is simply not found by the launcher.
        factory = request.app.state.sessionmaker
        background.add_task(runner.launch, factory, settings, runner.ALLOCATION, job.id)
        return 202, AllocationJobRead.model_validate(job).model_dump_json().encode()

    return respond_once(request, session, settings, principal, idempotency_key, body, produce)


@router.get("", response_model=AllocationJobPage, operation_id="list_allocation_jobs")
def list_jobs(
    principal: ReadKey,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AllocationJobPage:
    """Jobs, newest first."""
    rows, next_offset = allocation_jobs.list_page(
        session, limit=min(limit, settings.max_page_size), offset=offset
    )
    items = [_shown(AllocationJobRead.model_validate(r), principal) for r in rows]
    return AllocationJobPage(items=items, offset=offset, next_offset=next_offset)


@router.get(
    "/{job_id}",
    response_model=AllocationJobRead,
    responses=_NOT_FOUND,
    operation_id="get_allocation_job",
)
def get_job(job_id: uuid.UUID, principal: ReadKey, session: SessionDep) -> AllocationJobRead:
    """Status, phase, rows read and scored, progress, error; once succeeded the allocation id,
    totals and per-phase timings."""
    job = allocation_jobs.read(session, job_id)
    return _shown(AllocationJobRead.model_validate(job), principal)


@router.delete(
    "/{job_id}",
    status_code=202,
    response_model=AllocationJobRead,
    responses={**_NOT_FOUND, 409: {"description": "The job already finished"}},
    operation_id="cancel_allocation_job",
)
def cancel_job(job_id: uuid.UUID, principal: AllocateKey, session: SessionDep) -> AllocationJobRead:
    """Cancel: a running job stops within about a second and stores nothing."""
    job = allocation_jobs.cancel(session, job_id)
    return _shown(AllocationJobRead.model_validate(job), principal)


@router.get(
    "/{job_id}/decisions.parquet",
    response_class=FileResponse,
    responses={
        200: {"content": {PARQUET_MEDIA_TYPE: _BINARY}, "description": "Decisions, Parquet"},
        404: {"description": "Unknown job, or its file was removed"},
        409: {"description": "The job has not succeeded"},
    },
    operation_id="download_allocation_job_decisions",
)
def download_decisions(job_id: uuid.UUID, principal: ReadKey, session: SessionDep) -> FileResponse:
    """The job's decisions (position, customer id, treatment, expectations, exploration)."""
    path = allocation_jobs.decisions_file(session, job_id)
    return FileResponse(path, media_type=PARQUET_MEDIA_TYPE, filename=f"decisions-{job_id}.parquet")
