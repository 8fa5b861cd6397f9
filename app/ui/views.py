"""What each dashboard page shows, assembled from the service functions (app/services).

Why a module of its own: routes stay thin (auth, form parsing, rendering) and the numbers a page
shows are computed exactly as the API computes them (same service calls, same spend state), so
the browser test can compare the two. Nothing here writes, except what the services themselves
do when read (failing jobs whose process died).
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput, NotFound
from app.registry import Registry
from app.schemas import BudgetCurveCreate, CustomerIn, FeatureValue
from app.services import allocation_jobs, allocations, budget_curve, campaigns, models, retrain
from app.tables import Allocation, Campaign, Decision, ModelVersion
from app.ui import charts
from app.visibility import redact_text

RECENT = 10  # allocations and allocation jobs on the overview
CAMPAIGNS_SHOWN = 20
JOBS_SHOWN = 20
WHATIF_CUSTOMERS = 500  # a campaign's most recent customers used by the what-if
WHATIF_POINTS = 41


@dataclass(frozen=True)
class CampaignRow:
    """A campaign with the spend figures GET /v1/campaigns reports."""

    campaign: Campaign
    status: str
    committed: float
    realized: float
    predicted: float
    remaining: float

    @property
    def committed_share(self) -> float:
        return (
            min(max(self.committed / self.campaign.budget, 0.0), 1.0)
            if self.campaign.budget
            else 0.0
        )

    @property
    def realized_share(self) -> float:
        return (
            min(max(self.realized / self.campaign.budget, 0.0), 1.0)
            if self.campaign.budget
            else 0.0
        )


def campaign_row(campaign: Campaign) -> CampaignRow:
    state = campaigns.spend_state(campaign)
    return CampaignRow(
        campaign, campaigns.status_now(campaign), state.committed, state.realized,
        state.predicted, state.remaining,
    )  # fmt: skip


def overview(session: Session) -> dict[str, Any]:
    """Active model, recent allocations and jobs, campaigns' spend against budget."""
    active = models.active_version(session)
    recent, _ = allocations.list_page(
        session, campaign=None, model_version=None, created_after=None, created_before=None,
        limit=RECENT, offset=0,
    )  # fmt: skip
    jobs, _ = allocation_jobs.list_page(session, limit=RECENT, offset=0)
    rows, _ = campaigns.list_page(session, limit=CAMPAIGNS_SHOWN, offset=0)
    return {
        "active": models.get_version(session, active) if active is not None else None,
        "allocations": recent,
        "jobs": jobs,
        "campaigns": [campaign_row(c) for c in rows],
    }


def _ts(at: datetime) -> float:
    return at.replace(tzinfo=at.tzinfo or UTC).timestamp()


def _treatments(session: Session, version: str) -> list[str]:
    row = session.get(ModelVersion, version)
    return list(row.treatments) if row is not None else []


def campaign_page(session: Session, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Spend over time against the plan, multiplier history, predicted vs realized per arm."""
    campaign = campaigns.get(session, campaign_id)
    row = campaign_row(campaign)
    state = campaigns.spend_state(campaign)
    history = campaigns.history(session, campaign_id)
    xs = [_ts(p.at) for p in history]
    start = _ts(campaign.start_at)
    if campaign.end_at is not None:  # paced by time: the plan spends evenly until the end
        span = max(_ts(campaign.end_at) - start, 1e-9)
        plan = [
            p.budget * min(max((x - start) / span, 0.0), 1.0)
            for p, x in zip(history, xs, strict=True)
        ]
    else:  # paced by count: evenly over the expected customers
        expected = float(campaign.expected_customers or 1)
        plan = [p.budget * min(p.n_decisions / expected, 1.0) for p in history]
    spend_chart = charts.line_chart(
        [
            charts.Series("Committed", xs, [p.committed for p in history], "s1"),
            charts.Series("Realized", xs, [p.realized for p in history], "s2"),
            charts.Series("Plan", xs, plan, "s3"),
            charts.Series("Budget", xs, [p.budget for p in history], "s4"),
        ],
        title=f"Spend of {campaign.name} over time against the plan",
        x_label="time (UTC)", y_label="spend", x_format=charts.fmt_time, chart_id="spend-chart",
    )  # fmt: skip
    multipliers = [p.multiplier for p in history]
    multiplier_chart = charts.line_chart(
        [charts.Series("Multiplier", xs, multipliers, "s1", dots=True)],
        title=f"Pacing multiplier of {campaign.name} over time",
        x_label="time (UTC)", y_label="multiplier (λ)", x_format=charts.fmt_time,
        chart_id="multiplier-chart",
    )  # fmt: skip
    names = _treatments(session, campaign.model_version)
    arms, cal = state.arms, state.calibration
    arm_rows: list[dict[str, Any]] = [
        {
            "treatment": j,
            "name": names[j] if j < len(names) else str(j),
            "n_decisions": int(arms.n[j]),
            "n_outcomes": int(arms.n_outcomes[j]),
            "predicted_cost": float(arms.predicted[j]),
            "predicted_cost_with_outcomes": float(arms.outcome_predicted[j]),
            "realized_cost": float(arms.realized[j]),
            "calibration": float(cal.kappa[j]),
        }
        for j in range(len(arms.n))
    ]
    arm_chart = charts.bar_chart(
        [a["name"] for a in arm_rows],
        [
            ("Predicted (decisions with outcomes)",
             [a["predicted_cost_with_outcomes"] for a in arm_rows], "s1"),
            ("Realized", [a["realized_cost"] for a in arm_rows], "s2"),
        ],
        title="Predicted against realized cost per arm", y_label="cost", chart_id="arm-chart",
    )  # fmt: skip
    return {
        "row": row,
        "campaign": campaign,
        "history": history,
        "plan": plan,
        "arms": arm_rows,
        "spend_chart": spend_chart,
        "multiplier_chart": multiplier_chart,
        "arm_chart": arm_chart,
        "n_outcomes": int(arms.n_outcomes.sum()),
    }


# ----------------------------------------------------------------------------- what-if


@dataclass(frozen=True)
class WhatIf:
    """A budget curve ready to draw: per-customer budgets, totals, marginal revenue."""

    source: str
    n_customers: int
    model_version: str
    budgets: list[float]  # per customer
    revenue: list[float]  # totals over the customers
    cost: list[float]
    multiplier: list[float]
    marginal: list[float]  # extra revenue per extra unit of total budget, to the next point
    current: float | None  # the budget per customer in force, marked on the chart
    current_index: int
    chart: Markup

    def data(self) -> dict[str, Any]:
        """What static/whatif.js reads from the page (embedded as JSON)."""
        return {
            "n_customers": self.n_customers,
            "budgets": self.budgets,
            "revenue": self.revenue,
            "cost": self.cost,
            "multiplier": self.multiplier,
            "marginal": self.marginal,
            "current": self.current,
        }


def recent_customers(session: Session, campaign_id: uuid.UUID, limit: int) -> list[CustomerIn]:
    """The campaign's latest decided customers with their stored features (one per id)."""
    stmt = (
        select(Decision.customer_id, Decision.features)
        .join(Allocation, Allocation.id == Decision.allocation_id)
        .where(Allocation.campaign_id == campaign_id, Decision.features.is_not(None))
        .order_by(Allocation.created_at.desc(), Decision.position)
        .limit(4 * limit)
    )
    found: dict[str, CustomerIn] = {}
    for customer_id, features in session.execute(stmt):
        if customer_id not in found:
            found[customer_id] = CustomerIn(id=customer_id, features=features)
        if len(found) >= limit:
            break
    return list(found.values())


def parse_sample(text: str, numeric: set[str], limit: int) -> list[CustomerIn]:
    """CSV text (a header row, an optional `id` column, one column per feature) -> customers.

    Columns the model reads as numbers become floats; the rest stay strings (categories).
    """
    reader = csv.DictReader(io.StringIO(text.strip()))
    if not reader.fieldnames:
        raise InvalidInput("the sample is empty: paste or choose a CSV file with a header row")
    out: list[CustomerIn] = []
    for i, record in enumerate(reader):
        if len(out) >= limit:
            raise InvalidInput(f"the sample has more than {limit} customers")
        features: dict[str, FeatureValue] = {}
        for name, value in record.items():
            if name is None or name == "id":
                continue
            value = (value or "").strip()
            if name in numeric:
                try:
                    features[name] = float(value)
                except ValueError:
                    raise InvalidInput(
                        f"sample row {i + 1}: column {name!r} must be a number, got {value!r}"
                    ) from None
            else:
                features[name] = value
        out.append(
            CustomerIn(id=(record.get("id") or "").strip() or f"row-{i + 1}", features=features)
        )
    if not out:
        raise InvalidInput("the sample has a header but no customers")
    if len({c.id for c in out}) != len(out):
        raise InvalidInput("the sample repeats a customer id")
    return out


def numeric_features(session: Session, registry: Registry) -> set[str]:
    """Numeric raw columns of the active model (the rest of a sample's columns are categories)."""
    return set(models.resolve(session, registry, None).spec.numeric)


def what_if(
    session: Session,
    registry: Registry,
    customers: list[CustomerIn],
    *,
    source: str,
    model_version: str | None,
    current: float | None,
    max_customers: int,
) -> WhatIf:
    """The budget curve of `customers` per customer budget (POST /v1/budget-curve's numbers)."""
    body = BudgetCurveCreate(
        customers=customers,
        budgets=None,
        n_budgets=WHATIF_POINTS,
        per_capita=True,
        model_version=model_version,
    )
    found = budget_curve.curve(session, registry, body, max_customers=max_customers)
    points = [p for p in found.points if p.feasible]
    budgets = [p.budget for p in points]
    revenue = [float(p.expected_revenue or 0.0) for p in points]
    cost = [float(p.expected_cost or 0.0) for p in points]
    n = found.n_customers
    marginal = [
        (revenue[i + 1] - revenue[i]) / ((budgets[i + 1] - budgets[i]) * n)
        if budgets[i + 1] > budgets[i] else 0.0
        for i in range(len(points) - 1)
    ] + [0.0]  # past the useful maximum, more budget buys nothing  # fmt: skip
    idx = (
        int(np.argmin([abs(b - current) for b in budgets]))
        if current is not None and budgets
        else 0
    )
    chart = charts.line_chart(
        [
            charts.Series("Expected revenue", budgets, revenue, "s1"),
            charts.Series("Expected cost", budgets, cost, "s2"),
        ],
        title=f"Budget curve for {n} customers ({source})",
        x_label="budget per customer", y_label=f"total for {n} customers",
        marker_x=current if current is not None and math.isfinite(current) else None,
        marker_label="current budget", chart_id="curve-chart",
    )  # fmt: skip
    return WhatIf(
        source, n, found.model_version, budgets, revenue, cost,
        [float(p.multiplier or 0.0) for p in points], marginal, current, idx, chart,
    )  # fmt: skip


def campaign_what_if(
    session: Session, registry: Registry, campaign_id: uuid.UUID, *, max_customers: int
) -> WhatIf:
    """What-if on a campaign's recent customers, its planned budget per customer marked."""
    campaign = campaigns.get(session, campaign_id)
    customers = recent_customers(session, campaign_id, min(WHATIF_CUSTOMERS, max_customers))
    if not customers:
        raise NotFound(f"campaign {campaign.name!r} has no decided customers yet")
    _, total = campaigns.expected_customers(campaign, datetime.now(UTC))
    return what_if(
        session, registry, customers, source=f"campaign {campaign.name}",
        model_version=campaign.model_version, current=campaign.budget / total,
        max_customers=max_customers,
    )  # fmt: skip


# ------------------------------------------------------------------------------- models


def _scalars(data: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Top-level numbers and strings of a metrics dict (nested values are left out)."""
    return [
        (k, v) for k, v in (data or {}).items()
        if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)
    ]  # fmt: skip


def comparison_chart(job_id: uuid.UUID, comparison: dict[str, Any] | None) -> Markup | None:
    """Champion and challenger EOM revenue per budget of one retraining job, if compared."""
    if not comparison or "budgets" not in comparison:
        return None
    series = []
    for role, css in (("champion", "s3"), ("challenger", "s1")):
        found = comparison.get(role)
        if isinstance(found, dict) and "revenue" in found:
            label = f"{role.title()} {found.get('version', '')}".strip()
            series.append(
                charts.Series(label, comparison["budgets"], found["revenue"], css, dots=True)
            )
    if not series:
        return None
    return charts.line_chart(
        series, title=f"Champion against challenger, retraining job {job_id}",
        x_label="budget per customer", y_label="EOM revenue per customer",
        chart_id=f"cmp-{job_id}", zero_y=False,
    )  # fmt: skip


def models_page(session: Session) -> dict[str, Any]:
    """Versions with their validation metrics; retraining jobs' champion/challenger curves."""
    versions = models.list_versions(session)
    jobs = retrain.list_jobs(session, limit=JOBS_SHOWN)
    return {
        "versions": [
            {"row": v, "validation": _scalars(v.card.get("validation"))} for v in versions
        ],
        "jobs": [
            {
                "job": j,
                "chart": comparison_chart(j.id, j.comparison),
                "comparison": j.comparison or {},
            }
            for j in jobs
        ],
    }


def retrain_page(session: Session, *, admin: bool) -> dict[str, Any]:
    """Retraining jobs, newest first, each with its status and the tail of its log.

    Same visibility as GET /v1/retrain/{id} (app/visibility.py): the log and raw error text
    may hold server paths and data values, so only admin keys see them; others get the error
    redacted and no log.
    """
    jobs = [retrain.read(session, j.id) for j in retrain.list_jobs(session, limit=JOBS_SHOWN)]
    return {
        "jobs": [
            {
                "job": v.job,
                "log_tail": v.log_tail if admin else [],
                "error": v.job.error if admin else redact_text(v.job.error),
            }
            for v in jobs
        ]
    }
