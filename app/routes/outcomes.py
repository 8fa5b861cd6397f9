"""/v1/allocations/{id}/outcomes: record observed outcomes (upsert) and read them back."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.deps import SessionDep, SettingsDep
from app.schemas import OutcomePage, OutcomesCreate, OutcomesWritten
from app.services import outcomes

router = APIRouter(prefix="/v1/allocations", tags=["outcomes"])


@router.post(
    "/{allocation_id}/outcomes",
    response_model=OutcomesWritten,
    responses={
        404: {"description": "Unknown allocation"},
        422: {"description": "Ids not in the allocation (named), repeated ids, NaN/inf values"},
    },
)
def record_outcomes(
    allocation_id: uuid.UUID, body: OutcomesCreate, session: SessionDep
) -> dict[str, Any]:
    """Store observed revenue and cost per customer; a customer reported again is replaced."""
    items = body.outcomes
    return outcomes.record(
        session,
        allocation_id,
        [o.customer_id for o in items],
        [o.revenue for o in items],
        [o.cost for o in items],
    )


@router.get(
    "/{allocation_id}/outcomes",
    response_model=OutcomePage,
    responses={404: {"description": "Unknown allocation"}},
)
def list_outcomes(
    allocation_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Stored outcomes in request order, each with its decision's treatment and propensity."""
    return outcomes.list_page(
        session, allocation_id, limit=min(limit, settings.max_page_size), offset=offset
    )
