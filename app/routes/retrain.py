"""/v1/retrain: start a retraining job (one at a time) and follow it."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request

from app.auth import require_scope
from app.deps import SessionDep, SettingsDep
from app.jobs import runner
from app.schemas import RetrainCreate, RetrainRead
from app.services import retrain

router = APIRouter(prefix="/v1/retrain", tags=["retraining"])


@router.post(
    "",
    status_code=202,
    response_model=RetrainRead,
    responses={409: {"description": "A retraining job is already in progress"}},
    dependencies=[Depends(require_scope("admin"))],
)
def start_retraining(
    body: RetrainCreate,
    request: Request,
    background: BackgroundTasks,
    session: SessionDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Queue a job; its process starts once the job is committed. Follow it with GET."""
    job = retrain.start(session, settings, body)
    # Background tasks run after the response, i.e. after the session dependency committed.
    background.add_task(runner.launch, request.app.state.sessionmaker, settings, job.id)
    return {**{c: getattr(job, c) for c in RetrainRead.model_fields if hasattr(job, c)},
            "log_tail": []}  # fmt: skip


@router.get("", response_model=list[RetrainRead], dependencies=[Depends(require_scope("read"))])
def list_retraining(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[dict[str, Any]]:
    """Recent jobs, newest first (without logs)."""
    return retrain.list_jobs(session, limit=limit)


@router.get(
    "/{job_id}",
    response_model=RetrainRead,
    responses={404: {"description": "Unknown job"}},
    dependencies=[Depends(require_scope("read"))],
)
def get_retraining(job_id: uuid.UUID, session: SessionDep) -> dict[str, Any]:
    """Status, log tail, new version, metrics and the champion/challenger comparison."""
    return retrain.read(session, job_id)
