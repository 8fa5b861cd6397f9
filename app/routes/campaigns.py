"""/v1/campaigns: budgets spent over time by real-time, paced decisions."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from app.auth import AllocateKey, ReadKey
from app.deps import RegistryDep, RequestStateDep, SessionDep, SettingsDep
from app.registry import Registry
from app.schemas import (
    ArmSpendRead,
    CampaignCreate,
    CampaignDecide,
    CampaignDecisionRead,
    CampaignDecisions,
    CampaignPage,
    CampaignPatch,
    CampaignPoint,
    CampaignRead,
)
from app.services import campaigns
from app.tables import Campaign

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown campaign or model version"},
    409: {"description": "The campaign is paused, has ended or has not started"},
    422: {"description": "Invalid body (the field is named)"},
    503: {"description": "No model is active"},
}


def _read(
    session: Session, registry: Registry, campaign: Campaign, *, with_history: bool
) -> CampaignRead:
    state = campaigns.spend_state(campaign)
    names = list(registry.get(campaign.model_version).treatments)
    arms, cal = state.arms, state.calibration
    status = campaigns.status_now(campaign)
    return CampaignRead(
        id=campaign.id, name=campaign.name, status=status, budget=campaign.budget,
        start_at=campaign.start_at, end_at=campaign.end_at,
        expected_customers=campaign.expected_customers, model_version=campaign.model_version,
        exploration_rate=campaign.exploration_rate, pacing=campaign.pacing,
        plan_source=campaign.plan_source, plan_multiplier=campaign.plan_multiplier,
        multiplier=campaign.multiplier, n_decisions=campaign.n_decisions,
        n_outcomes=int(arms.n_outcomes.sum()), n_budget_exhausted=campaign.n_stopped,
        committed_spend=state.committed, predicted_spend=state.predicted,
        realized_spend=state.realized, remaining_budget=state.remaining,
        arms=[
            ArmSpendRead(
                treatment=j, treatment_name=names[j], n_decisions=int(arms.n[j]),
                n_outcomes=int(arms.n_outcomes[j]), predicted_cost=float(arms.predicted[j]),
                predicted_cost_with_outcomes=float(arms.outcome_predicted[j]),
                realized_cost=float(arms.realized[j]), calibration=float(cal.kappa[j]),
                calibration_se=float(cal.se[j]) if arms.n_outcomes[j] > 1 else None,
            )
            for j in range(len(names))
        ],
        history=[CampaignPoint.model_validate(p) for p in campaigns.history(session, campaign.id)]
        if with_history else [],
        created_at=campaign.created_at, updated_at=campaign.updated_at,
    )  # fmt: skip


@router.post("", status_code=201, response_model=CampaignRead, responses=_ERRORS)
def create_campaign(
    body: CampaignCreate, principal: AllocateKey, session: SessionDep, registry: RegistryDep
) -> CampaignRead:
    """Start a campaign: a total budget paced over time or over expected customers."""
    campaign = campaigns.create(session, registry, body)
    return _read(session, registry, campaign, with_history=True)


@router.get("", response_model=CampaignPage)
def list_campaigns(
    principal: ReadKey,
    session: SessionDep,
    registry: RegistryDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> CampaignPage:
    """Campaigns, newest first (without history)."""
    rows, next_offset = campaigns.list_page(
        session, limit=min(limit, settings.max_page_size), offset=offset
    )
    items = [_read(session, registry, c, with_history=False) for c in rows]
    return CampaignPage(items=items, offset=offset, next_offset=next_offset)


@router.get("/{campaign_id}", response_model=CampaignRead, responses={404: _ERRORS[404]})
def get_campaign(
    campaign_id: uuid.UUID, principal: ReadKey, session: SessionDep, registry: RegistryDep
) -> CampaignRead:
    """Status, budget, committed/realized/remaining spend, multiplier, per-arm spend, history."""
    return _read(session, registry, campaigns.get(session, campaign_id), with_history=True)


@router.patch("/{campaign_id}", response_model=CampaignRead, responses=_ERRORS)
def patch_campaign(
    campaign_id: uuid.UUID,
    body: CampaignPatch,
    principal: AllocateKey,
    session: SessionDep,
    registry: RegistryDep,
) -> CampaignRead:
    """Change the budget, end or expected count, or pause/resume: effective on the next batch."""
    campaign = campaigns.patch(session, campaign_id, body)
    return _read(session, registry, campaign, with_history=True)


@router.post(
    "/{campaign_id}/decisions", status_code=201, response_model=CampaignDecisions,
    responses=_ERRORS, operation_id="decide_campaign",
)  # fmt: skip
def decide(
    campaign_id: uuid.UUID,
    body: CampaignDecide,
    principal: AllocateKey,
    session: SessionDep,
    registry: RegistryDep,
    state: RequestStateDep,
) -> Response:
    """Treat arriving customers at the campaign's multiplier; then pace the multiplier.

    The transaction commits here, in the thread that holds the campaign's row lock (and, on
    SQLite, the process's write gate), not after the endpoint returns: then no request waits
    for a threadpool thread while holding the lock every other decision of the campaign queues
    on. The body is serialised here too (one pass, no second validation of the response).
    """
    done = campaigns.decide(session, registry, campaign_id, body)
    out = CampaignDecisions(
        campaign_id=done.campaign.id, allocation_id=done.allocation_id,
        multiplier=done.multiplier, next_multiplier=done.campaign.multiplier,
        committed_spend=done.spend.committed, remaining_budget=done.spend.remaining,
        n_budget_exhausted=sum(done.stopped),
        decisions=[
            CampaignDecisionRead(
                customer_id=d.customer_id, treatment=d.treatment, treatment_name=d.treatment_name,
                expected_revenue=d.expected_revenue, expected_cost=d.expected_cost,
                propensity=d.propensity, explored=d.explored, budget_exhausted=s,
            )
            for d, s in zip(done.decisions, done.stopped, strict=True)
        ],
    )  # fmt: skip
    content = out.model_dump_json().encode()
    if state.deadline is not None and not state.deadline.claim_commit():
        raise state.deadline.error()  # the client already got 504: roll back, keep nothing
    session.commit()
    return Response(content=content, status_code=201, media_type="application/json")
