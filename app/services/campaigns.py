"""Campaigns: one budget spent over time by real-time decisions, paced by one multiplier.

State lives in the database, never in a process: the campaign row holds the multiplier, the
counters and the per-arm cost aggregates (app/core/pacing.py ArmSpend, as JSON), and every
change to it happens under a row lock (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the
database write lock, taken by the transaction's first statement). So decisions from any
number of workers and processes see one multiplier and the committed spend never passes the
budget.

Decisions of a batch are stored as an ordinary allocation (campaign_id set), so outcomes,
retraining and champion/challenger use them unchanged. Outcomes recorded for them update the
campaign's realized spend and per-arm calibration in the same transaction (`on_outcomes`).

Where the first multiplier comes from (the plan), in order of preference:
1. `multiplier`: given by the user;
2. `sample`: the exact batch solve on a sample of expected customers at the campaign's pace
   (budget / expected customers per customer);
3. neither: "customers seen so far": until the warm-up has passed, every batch is solved on
   its own at the pace budget (a per-request budget, as POST /v1/allocations does) and the
   multiplier is the running geometric mean of those batches' multipliers.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from app.core import pacing
from app.core.solver import InfeasibleBudget, allocate
from app.db import begin_write
from app.errors import Conflict, InvalidInput, NotFound
from app.registry import Registry
from app.schemas import CampaignCreate, CampaignDecide, CampaignPatch, CustomerIn
from app.services import models
from app.services.allocations import (
    DecisionView,
    Predicted,
    predict_customers,
    score_customers,
)
from app.services.decision_rows import decision_batch, insert_decisions
from app.services.exploration import SEED_LIMIT, draw, new_seed
from app.tables import Allocation, Campaign, CampaignHistory

PACING = pacing.PacingConfig()
HISTORY_EVERY = timedelta(seconds=1)  # at most one history point per campaign per second
HISTORY_SHOWN = 500  # points returned by GET (evenly thinned)
_HISTORY = cast(Table, CampaignHistory.__table__)


def _now() -> datetime:
    return datetime.now(UTC)


_FIELDS = (
    "n", "predicted", "n_outcomes", "outcome_predicted", "realized", "realized_sq", "cross",
    "predicted_sq",
)  # fmt: skip


def _arms(campaign: Campaign) -> pacing.ArmSpend:
    return pacing.ArmSpend(*(np.asarray(campaign.arms[f], dtype=np.float64) for f in _FIELDS))


def _arms_json(arms: pacing.ArmSpend) -> dict[str, list[float]]:
    return {f: [float(v) for v in getattr(arms, f)] for f in _FIELDS}


@dataclass(frozen=True)
class SpendState:
    """What a campaign has spent and may still spend, derived from its per-arm aggregates."""

    committed: float  # realized where known + calibrated expected cost of pending decisions
    predicted: float  # predicted cost of every decision
    realized: float  # realized cost of decisions with outcomes
    remaining: float
    calibration: pacing.Calibration
    arms: pacing.ArmSpend


def spend_state(campaign: Campaign) -> SpendState:
    arms = _arms(campaign)
    cal = pacing.calibrate(arms, PACING.prior_decisions)
    committed = pacing.committed(arms, cal.kappa)
    return SpendState(
        committed, float(arms.predicted.sum()), float(arms.realized.sum()),
        campaign.budget - committed, cal, arms,
    )  # fmt: skip


def expected_customers(campaign: Campaign, now: datetime) -> tuple[float, float]:
    """(customers still expected, customers expected in all), from the count or the clock.

    With an end time the arrival rate so far projects the rest (the expected count, if given,
    stands in until a tenth of the time has passed); otherwise the expected count is used.
    """
    seen = float(campaign.n_decisions)
    if campaign.end_at is not None:
        total_s = max((campaign.end_at - campaign.start_at).total_seconds(), 1e-9)
        elapsed = min(max((now - campaign.start_at).total_seconds(), 0.0), total_s)
        if campaign.expected_customers is not None and elapsed < 0.1 * total_s:
            total = float(campaign.expected_customers)
        else:
            total = seen / max(elapsed, 1e-9) * total_s if seen else float("inf")
            if not math.isfinite(total):
                total = float(campaign.expected_customers or max(seen, 1.0))
        return max(total - seen, 1.0), max(total, 1.0)
    total = float(campaign.expected_customers or max(seen, 1.0))
    return max(total - seen, 1.0), total


# ---------------------------------------------------------------------------------- create


def create(session: Session, registry: Registry, body: CampaignCreate) -> Campaign:
    """Validate and store a campaign with its starting multiplier (the plan)."""
    model = models.resolve(session, registry, body.model_version)
    now = _now()
    start = body.start_at or now
    if body.end_at is not None and body.end_at <= start:
        raise InvalidInput("end_at must be after start_at", field="end_at")
    if body.end_at is None and body.expected_customers is None:
        raise InvalidInput(
            "give end_at (pace by time) or expected_customers (pace by count), or both",
            field="expected_customers",
        )
    lam: float | None = None
    source = "seen"
    if body.plan_multiplier is not None:
        lam, source = body.plan_multiplier, "multiplier"
    elif body.plan_sample:
        if body.expected_customers is None:
            raise InvalidInput(
                "a sample plan needs expected_customers (the pace per customer is "
                "budget / expected_customers)",
                field="expected_customers",
            )
        predicted = predict_customers(
            session, registry, body.plan_sample, model.version, max_customers=10**6
        )
        pace = body.budget / body.expected_customers * len(body.plan_sample)
        try:
            lam = allocate(predicted.revenue, predicted.cost, pace).lam
        except InfeasibleBudget as exc:
            raise InvalidInput(
                f"the budget's pace cannot pay the sample's cheapest arms: {exc}", field="budget"
            ) from None
        source = "sample"
    k = model.n_treatments
    campaign = Campaign(
        id=uuid.uuid4(), name=body.name, status="active", created_at=now, updated_at=now,
        budget=body.budget, start_at=start, end_at=body.end_at,
        expected_customers=body.expected_customers, model_version=model.version,
        exploration_rate=body.exploration_rate,
        seed=body.seed if body.seed is not None else new_seed(), pacing=body.pacing,
        plan_source=source, plan_multiplier=lam, multiplier=lam, n_decisions=0, n_stopped=0,
        cheapest_cost=0.0,
        arms=_arms_json(pacing.ArmSpend.empty(k)), last_history_at=None,
    )  # fmt: skip
    begin_write(session)
    session.add(campaign)
    session.flush()
    _history(session, campaign, now, force=True)
    return campaign


# -------------------------------------------------------------------------------- read/patch


def status_now(campaign: Campaign, now: datetime | None = None) -> str:
    """active | paused | finished: a campaign past its end is finished whatever its row says."""
    now = now or _now()
    if campaign.status == "finished" or (campaign.end_at is not None and now >= campaign.end_at):
        return "finished"
    return campaign.status


def get(session: Session, campaign_id: uuid.UUID) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def history(session: Session, campaign_id: uuid.UUID) -> list[CampaignHistory]:
    """The multiplier and spend history, thinned evenly to at most HISTORY_SHOWN points."""
    rows = list(
        session.scalars(
            select(CampaignHistory)
            .where(CampaignHistory.campaign_id == campaign_id)
            .order_by(CampaignHistory.id)
        )
    )
    if len(rows) <= HISTORY_SHOWN:
        return rows
    keep = np.unique(np.linspace(0, len(rows) - 1, HISTORY_SHOWN).round().astype(int))
    return [rows[i] for i in keep]


def list_page(session: Session, *, limit: int, offset: int) -> tuple[list[Campaign], int | None]:
    rows = list(
        session.scalars(
            select(Campaign).order_by(Campaign.created_at.desc(), Campaign.id)
            .offset(offset).limit(limit + 1)
        )
    )  # fmt: skip
    return rows[:limit], (offset + limit if len(rows) > limit else None)


def _take_lock(session: Session, campaign_id: uuid.UUID) -> bool:
    """Start this transaction's write and lock the campaign (see the module docstring).

    SQLite: the first write statement takes the database write lock before anything is read.
    Returns whether the row's read must lock it itself (PostgreSQL: SELECT ... FOR UPDATE).
    """
    begin_write(session)
    if session.get_bind().dialect.name == "sqlite":
        session.execute(_TAKE_WRITE_LOCK, {"campaign_key": campaign_id})
        return False
    return True


def _locked(session: Session, campaign_id: uuid.UUID) -> Campaign:
    """The campaign row under this transaction's lock, as an ORM object (for slow paths)."""
    for_update = _take_lock(session, campaign_id)
    campaign = session.get(
        Campaign, campaign_id, with_for_update=True if for_update else None,
        populate_existing=True,
    )  # fmt: skip
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def patch(session: Session, campaign_id: uuid.UUID, body: CampaignPatch) -> Campaign:
    """Change the budget, the end, the expected count, or pause/resume; effective at once."""
    campaign = _locked(session, campaign_id)
    if campaign.status == "finished":
        raise Conflict(f"campaign {campaign_id} has finished")
    changes = body.model_dump(exclude_unset=True)
    if "budget" in changes:  # below what is committed: allowed, spending stops at once
        if body.budget is None:
            raise InvalidInput("budget cannot be null", field="budget")
        campaign.budget = body.budget
    if "end_at" in changes:
        if body.end_at is not None and body.end_at <= campaign.start_at:
            raise InvalidInput("end_at must be after start_at", field="end_at")
        campaign.end_at = body.end_at
    if "expected_customers" in changes:
        campaign.expected_customers = body.expected_customers
    if campaign.end_at is None and campaign.expected_customers is None:
        raise InvalidInput("a campaign needs end_at or expected_customers", field="end_at")
    if body.status is not None:
        campaign.status = body.status
    campaign.updated_at = _now()
    _history(session, campaign, campaign.updated_at, force=True)
    return campaign


# --------------------------------------------------------------------------------- decide
#
# The hot path (one POST per arriving customer or batch) uses Core statements, not the ORM:
# lock + read the row, insert the allocation, insert its decisions, update the row (and, at
# most once a second, a history point). A campaign's model version never changes, so it is
# remembered per process and the model is scored before the lock without reading the row.

_MODEL_OF: dict[uuid.UUID, str] = {}  # campaign id -> model version (immutable once created)
_MODEL_OF_MAX = 10_000
_CAMPAIGNS = cast(Table, Campaign.__table__)
_ALLOCATIONS = cast(Table, Allocation.__table__)
# Statements built once (values are bound at execution: no per-call compile or cache key).
_BY_ID = _CAMPAIGNS.c.id == bindparam("campaign_key")
_SELECT_ROW = select(_CAMPAIGNS).where(_BY_ID)
_SELECT_ROW_FOR_UPDATE = _SELECT_ROW.with_for_update()
_TAKE_WRITE_LOCK = update(_CAMPAIGNS).where(_BY_ID).values(id=_CAMPAIGNS.c.id)
_UPDATE_ROW = update(_CAMPAIGNS).where(_BY_ID)  # SET: the keys of the parameters
_INSERT_ALLOCATION = insert(_ALLOCATIONS)


@dataclass(frozen=True)
class Decided:
    """One decision batch: the stored allocation's id and per-customer results."""

    campaign: Campaign  # the row after the batch (detached: a snapshot, not in the session)
    allocation_id: uuid.UUID
    decisions: list[DecisionView]
    stopped: list[bool]  # the hard stop gave this customer the cheapest arm
    multiplier: float  # the multiplier the batch was decided at
    spend: SpendState  # after the batch


def _model_version(session: Session, campaign_id: uuid.UUID) -> str:
    version = _MODEL_OF.get(campaign_id)
    if version is None:
        version = session.scalar(select(Campaign.model_version).where(Campaign.id == campaign_id))
        if version is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        if len(_MODEL_OF) >= _MODEL_OF_MAX:
            _MODEL_OF.clear()
        _MODEL_OF[campaign_id] = version
    return version


def _predict(registry: Registry, version: str, customers: list[CustomerIn]) -> Predicted:
    """The campaign's own model (registered when the campaign was created, so no registry row
    is read) scores the customers."""
    return score_customers(registry.get(version), customers)


def _locked_row(session: Session, campaign_id: uuid.UUID) -> Campaign:
    """The campaign row under this transaction's lock, as a detached snapshot (Core read)."""
    select_row = _SELECT_ROW_FOR_UPDATE if _take_lock(session, campaign_id) else _SELECT_ROW
    row = session.execute(select_row, {"campaign_key": campaign_id}).first()
    if row is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return Campaign(**row._asdict())


def decide(
    session: Session, registry: Registry, campaign_id: uuid.UUID, body: CampaignDecide
) -> Decided:
    """Decide a batch at the campaign's multiplier, store it, then take one pacing step."""
    version = _model_version(session, campaign_id)
    scored = _predict(registry, version, body.customers)  # outside the lock
    model, revenue, cost = scored.model, scored.revenue, scored.cost
    n, k = revenue.shape
    campaign = _locked_row(session, campaign_id)
    now = _now()
    if campaign.status == "paused":
        raise Conflict(f"campaign {campaign.name!r} is paused", status="paused")
    if campaign.status == "finished" or (campaign.end_at is not None and now >= campaign.end_at):
        raise Conflict(f"campaign {campaign.name!r} has ended", status="finished")
    if now < campaign.start_at:
        raise Conflict(f"campaign {campaign.name!r} starts at {campaign.start_at.isoformat()}")
    state = spend_state(campaign)
    remaining_n, total_n = expected_customers(campaign, now)
    pace = max(state.remaining, 0.0) / remaining_n
    lam = campaign.multiplier
    warm = campaign.n_decisions < PACING.warmup
    if lam is None or (warm and campaign.plan_source == "seen"):
        lam = _seen_so_far(revenue, cost * state.calibration.kappa, pace * n, campaign)
    kappa = state.calibration.kappa
    cheapest = (cost * kappa).min(axis=1)  # (n,) what each customer is owed at least
    if float(cheapest.sum()) > state.remaining:
        raise Conflict(
            f"campaign {campaign.name!r} has spent its budget: {max(state.remaining, 0.0):.6g} "
            f"left cannot pay even the cheapest arms of these customers "
            f"({float(cheapest.sum()):.6g}); nothing was stored",
            status="exhausted", remaining_budget=state.remaining,
        )  # fmt: skip
    seen_cheapest = campaign.cheapest_cost + float(cheapest.sum())
    reserve = seen_cheapest / (campaign.n_decisions + n) * max(remaining_n - n, 0.0)
    rate = campaign.exploration_rate
    rows = np.arange(campaign.n_decisions, campaign.n_decisions + n, dtype=np.int64)
    explored, arm = draw(campaign.seed % SEED_LIMIT, rows, rate, k) if rate > 0 else (None, None)
    out = pacing.decide(revenue, cost, lam, kappa, state.remaining, explored, arm, reserve)
    treatment = out.treatment
    is_explored = (explored if explored is not None else np.zeros(n, bool)) & ~out.stopped
    greedy = np.where(is_explored, out.greedy, treatment)
    propensity = np.where(
        out.stopped, 1.0, (1.0 - rate) * (treatment == greedy) + rate / k
    )  # stopped customers got the cheapest arm for certain
    at = np.arange(n)
    chosen_r, chosen_c = revenue[at, treatment], cost[at, treatment]
    allocation_id = uuid.uuid4()
    session.execute(
        _INSERT_ALLOCATION,
        dict(
            id=allocation_id, created_at=now, campaign=campaign.name, campaign_id=campaign.id,
            model_version=campaign.model_version, budget=max(state.remaining, 0.0),
            per_capita=False, budget_total=max(state.remaining, 0.0), multiplier=float(lam),
            n_customers=n, expected_revenue=float(chosen_r.sum()),
            expected_cost=float(chosen_c.sum()), exploration_rate=rate,
            seed=campaign.seed if rate > 0 else None, n_explored=int(is_explored.sum()),
        ),
    )  # fmt: skip
    ids = [c.id for c in body.customers]
    columns = (
        ids, treatment.tolist(), chosen_r.tolist(), chosen_c.tolist(), propensity.tolist(),
        is_explored.tolist(),
    )  # fmt: skip
    batch = decision_batch(
        ids, treatment, chosen_r, chosen_c, propensity, is_explored,
        [c.features for c in body.customers],
    )  # fmt: skip
    insert_decisions(session, allocation_id, [batch])
    arms = state.arms.add_decisions(treatment, chosen_c)
    new_lam = pacing.next_multiplier(
        lam, float(out.cost.sum()), n, state.remaining, remaining_n, total_n,
        campaign.n_decisions, PACING,
    )  # fmt: skip
    campaign.arms = _arms_json(arms)
    campaign.multiplier = new_lam
    campaign.n_decisions += n
    campaign.n_stopped += int(out.stopped.sum())
    campaign.cheapest_cost = seen_cheapest
    campaign.updated_at = now
    after = spend_state(campaign)
    _history(session, campaign, now, state=after)  # sets last_history_at when it adds a point
    session.execute(
        _UPDATE_ROW,
        dict(
            campaign_key=campaign.id, arms=campaign.arms, multiplier=new_lam,
            n_decisions=campaign.n_decisions, n_stopped=campaign.n_stopped,
            cheapest_cost=seen_cheapest, updated_at=now, last_history_at=campaign.last_history_at,
        ),
    )  # fmt: skip
    _expire_loaded(session, campaign.id)
    names = list(model.treatments)
    views = [
        DecisionView(i, t, names[t], r, c, p, e) for i, t, r, c, p, e in zip(*columns, strict=True)
    ]
    return Decided(campaign, allocation_id, views, out.stopped.tolist(), float(lam), after)


def _expire_loaded(session: Session, campaign_id: uuid.UUID) -> None:
    """A Core update bypasses the session: drop a copy of the row it may have loaded."""
    loaded = session.identity_map.get(session.identity_key(Campaign, campaign_id))
    if loaded is not None:
        session.expire(loaded)


def _seen_so_far(revenue: Any, cost: Any, pace_budget: float, campaign: Campaign) -> float:
    """Warm-up without a plan: solve this batch at its pace budget; blend into the multiplier."""
    try:
        lam = allocate(revenue, cost, pace_budget).lam
    except InfeasibleBudget:
        lam = PACING.lam_max
    lam = min(max(lam, PACING.lam_min), PACING.lam_max)
    if campaign.multiplier is None or campaign.n_decisions == 0:
        return lam
    w = 1.0 / (1.0 + campaign.n_decisions / max(revenue.shape[0], 1))
    return float(np.exp((1 - w) * np.log(campaign.multiplier) + w * np.log(lam)))


# -------------------------------------------------------------------------------- outcomes


def on_outcomes(
    session: Session,
    campaign_id: uuid.UUID,
    treatment: Any,
    predicted_cost: Any,
    realized_cost: Any,
    previous_cost: Any,
    had_outcome: Any,
) -> None:
    """Fold newly recorded outcomes into the campaign's aggregates (under its lock).

    A second report for a customer replaces the first: its old realized cost is taken out.
    All arrays (m,): treatment, predicted (decision) cost, new and previous realized cost, and
    whether an outcome existed before.
    """
    campaign = _locked(session, campaign_id)
    arms = _arms(campaign)
    old = np.asarray(had_outcome, dtype=bool)
    if old.any():
        arms = _subtract_outcomes(arms, treatment[old], predicted_cost[old], previous_cost[old])
    arms = arms.add_outcomes(treatment, predicted_cost, realized_cost)
    campaign.arms = _arms_json(arms)
    campaign.updated_at = _now()
    _history(session, campaign, campaign.updated_at)


def _subtract_outcomes(
    arms: pacing.ArmSpend, treatment: Any, predicted: Any, realized: Any
) -> pacing.ArmSpend:
    removed = pacing.ArmSpend.empty(arms.n.size).add_outcomes(treatment, predicted, realized)
    return pacing.ArmSpend(
        arms.n, arms.predicted,
        *(getattr(arms, f) - getattr(removed, f) for f in _FIELDS[2:]),
    )  # fmt: skip


def _history(
    session: Session,
    campaign: Campaign,
    now: datetime,
    *,
    force: bool = False,
    state: SpendState | None = None,
) -> None:
    """Append a history point, at most one per HISTORY_EVERY unless forced. `state`: the
    campaign's spend state if the caller has it already."""
    if not force and campaign.last_history_at is not None:
        if now - campaign.last_history_at < HISTORY_EVERY:
            return
    state = state or spend_state(campaign)
    session.execute(
        insert(_HISTORY),
        dict(
            campaign_id=campaign.id, at=now, multiplier=campaign.multiplier,
            committed=state.committed, realized=state.realized, predicted=state.predicted,
            n_decisions=campaign.n_decisions, budget=campaign.budget,
        ),
    )  # fmt: skip
    campaign.last_history_at = now
