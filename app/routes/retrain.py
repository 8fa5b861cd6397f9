"""/v1/retrain: start a retraining job (one at a time) and follow it."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request

from app.auth import AdminKey, Principal, ReadKey
from app.deps import SessionDep, SettingsDep
from app.jobs import runner
from app.schemas import RetrainCreate, RetrainRead
from app.services import retrain
from app.visibility import is_admin, public_data, public_params, redact_text

router = APIRouter(prefix="/v1/retrain", tags=["retraining"])


def _shown(out: RetrainRead, principal: Principal) -> RetrainRead:
    """Server paths, the training config, raw error text and the log are for admin keys; a
    read key sees the error with its data values redacted."""
    if is_admin(principal):
        return out
    return out.model_copy(
        update={
            "params": public_params(out.params),
            "data": public_data(out.data),
            "error": redact_text(out.error),
            "log_tail": [],
        }
    )


@router.post(
    "",
    status_code=202,
    response_model=RetrainRead,
    responses={409: {"description": "A retraining job is already in progress"}},
)
def start_retraining(
    body: RetrainCreate,
    principal: AdminKey,
    request: Request,
    background: BackgroundTasks,
    session: SessionDep,
    settings: SettingsDep,
) -> RetrainRead:
    """Queue a job; its process starts once the job is committed. Follow it with GET."""
    job = retrain.start(session, settings, body)
    # Background tasks run after the response, i.e. after the session dependency committed.
    factory = request.app.state.sessionmaker
    background.add_task(runner.launch, factory, settings, runner.RETRAIN, job.id)
    return RetrainRead.model_validate(job)  # nothing logged yet


@router.get("", response_model=list[RetrainRead])
def list_retraining(
    principal: ReadKey, session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[RetrainRead]:
    """Recent jobs, newest first (without logs); paths, config and raw errors: admin keys."""
    jobs = retrain.list_jobs(session, limit=limit)
    return [_shown(RetrainRead.model_validate(job), principal) for job in jobs]


@router.get(
    "/{job_id}",
    response_model=RetrainRead,
    responses={404: {"description": "Unknown job"}},
)
def get_retraining(job_id: uuid.UUID, principal: ReadKey, session: SessionDep) -> RetrainRead:
    """Status, log tail, new version, metrics and the champion/challenger comparison (the log,
    server paths, training config and raw error text only for admin keys)."""
    return _shown(RetrainRead.model_validate(retrain.read(session, job_id)), principal)
