"""/v1/budget-curve: what each budget would buy for a list of customers (nothing stored)."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import AllocateKey
from app.deps import RegistryDep, SessionDep, SettingsDep
from app.schemas import BudgetCurveCreate, BudgetCurveRead
from app.services import budget_curve

router = APIRouter(prefix="/v1/budget-curve", tags=["budget what-if"])


@router.post(
    "",
    response_model=BudgetCurveRead,
    responses={
        404: {"description": "Unknown model version"},
        413: {"description": "More customers than DFCL_MAX_CUSTOMERS"},
        422: {"description": "Invalid body or features (names the customer)"},
        503: {"description": "No model is active"},
    },
)
def budget_what_if(
    body: BudgetCurveCreate,
    principal: AllocateKey,  # runs the model like an allocation
    session: SessionDep,
    registry: RegistryDep,
    settings: SettingsDep,
) -> BudgetCurveRead:
    """Expected revenue and cost of the best allocation at each budget, from one model call."""
    found = budget_curve.curve(session, registry, body, max_customers=settings.max_customers)
    return BudgetCurveRead.model_validate(found)
