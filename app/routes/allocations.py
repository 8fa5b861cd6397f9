"""/v1/allocations: create an allocation, list them, read one with its decisions."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.auth import AllocateKey, ReadKey
from app.deps import RegistryDep, RequestStateDep, SessionDep, SettingsDep
from app.routes.idempotent import IDEMPOTENCY_ERRORS, IdempotencyKey, respond_once
from app.schemas import (
    AllocationCreate,
    AllocationPage,
    AllocationRead,
    AllocationSummary,
    Text,
    Timestamp,
)
from app.services import allocations

router = APIRouter(prefix="/v1/allocations", tags=["allocations"])
# Databases take 64-bit offsets at most (SQLite overflows above); no real page is this deep.
MAX_OFFSET = 2**31 - 1

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown allocation or model version"},
    413: {"description": "More customers than DFCL_MAX_CUSTOMERS"},
    422: {
        "description": "Invalid body: budget <= 0, repeated ids, missing/NaN/inf features "
        "(names the customer), or a budget below the cheapest assignment (gives min_budget)"
    },
    503: {"description": "No model is active"},
}


@router.post(
    "",
    status_code=201,
    response_model=AllocationRead,
    responses={**_ERRORS, **IDEMPOTENCY_ERRORS},
)
def create_allocation(
    body: AllocationCreate,
    request: Request,
    state: RequestStateDep,
    session: SessionDep,
    registry: RegistryDep,
    settings: SettingsDep,
    principal: AllocateKey,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Choose one treatment per customer so the expected cost stays within the budget."""

    def produce() -> tuple[int, bytes]:
        created = allocations.create(
            session,
            registry,
            body,
            max_customers=settings.max_customers,
            exploration_rate=settings.exploration_rate,
        )
        state.timings_ms = created.timings_ms  # Server-Timing header, added after commit
        state.allocation = created.result.allocation  # counted in /metrics once sent
        return 201, AllocationRead.model_validate(created.result).model_dump_json().encode()

    return respond_once(request, session, settings, principal, idempotency_key, body, produce)


@router.get("", response_model=AllocationPage)
def list_allocations(
    principal: ReadKey,
    session: SessionDep,
    settings: SettingsDep,
    campaign: Text | None = None,
    model_version: Text | None = None,
    created_after: Annotated[
        Timestamp | None, Query(description="Inclusive, ISO 8601 (naive means UTC)")
    ] = None,
    created_before: Annotated[
        Timestamp | None, Query(description="Exclusive, ISO 8601 (naive means UTC)")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AllocationPage:
    """Stored allocations, newest first, without their decisions."""
    rows, next_offset = allocations.list_page(
        session,
        campaign=campaign,
        model_version=model_version,
        created_after=created_after,
        created_before=created_before,
        limit=min(limit, settings.max_page_size),
        offset=offset,
    )
    items = [AllocationSummary.model_validate(r) for r in rows]
    return AllocationPage(items=items, offset=offset, next_offset=next_offset)


@router.get(
    "/{allocation_id}",
    response_model=AllocationRead,
    responses={404: _ERRORS[404]},
)
def get_allocation(
    allocation_id: uuid.UUID,
    principal: ReadKey,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, description="Decisions per page")] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AllocationRead:
    """One allocation with a page of its decisions in request order."""
    limit = min(limit, settings.max_page_size)
    found = allocations.get(session, allocation_id, limit=limit, offset=offset)
    return AllocationRead.model_validate(found)
