"""/v1/allocations/{id}/outcomes: record observed outcomes (upsert) and read them back."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.auth import AllocateKey, ReadKey
from app.deps import SessionDep, SettingsDep
from app.routes.allocations import MAX_OFFSET
from app.routes.idempotent import IDEMPOTENCY_ERRORS, IdempotencyKey, respond_once
from app.schemas import OutcomePage, OutcomesCreate, OutcomesWritten
from app.services import outcomes

router = APIRouter(prefix="/v1/allocations", tags=["outcomes"])


@router.post(
    "/{allocation_id}/outcomes",
    response_model=OutcomesWritten,
    responses={
        404: {"description": "Unknown allocation"},
        422: {"description": "Ids not in the allocation (named), repeated ids, NaN/inf values"},
        **IDEMPOTENCY_ERRORS,
    },
)
def record_outcomes(
    allocation_id: uuid.UUID,
    body: OutcomesCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AllocateKey,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Store observed revenue and cost per customer; a customer reported again is replaced."""

    def produce() -> tuple[int, bytes]:
        items = body.outcomes
        written = outcomes.record(
            session,
            allocation_id,
            [o.customer_id for o in items],
            [o.revenue for o in items],
            [o.cost for o in items],
        )
        return 200, OutcomesWritten.model_validate(written).model_dump_json().encode()

    return respond_once(request, session, settings, principal, idempotency_key, body, produce)


@router.get(
    "/{allocation_id}/outcomes",
    response_model=OutcomePage,
    responses={404: {"description": "Unknown allocation"}},
)
def list_outcomes(
    allocation_id: uuid.UUID,
    principal: ReadKey,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> OutcomePage:
    """Stored outcomes in request order, each with its decision's treatment and propensity."""
    limit = min(limit, settings.max_page_size)
    page = outcomes.list_page(session, allocation_id, limit=limit, offset=offset)
    return OutcomePage.model_validate(page)
