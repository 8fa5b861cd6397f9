"""Request and response bodies of the HTTP API (pydantic v2), with OpenAPI examples."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
import uuid
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    ValidationError,
    computed_field,
    create_model,
    model_validator,
)

from app.core.features import MAX_ABS

FeatureValue = float | int | str | bool | None

# --- input rules shared by every request model (README "Input rules") -------------------------

# Money (budgets, outcomes, margins) is a JSON number with |x| <= MAX_MONEY: 1e15 is beyond any
# real budget, and x customers (<= 1e6 a request) keeps every total finite in float64.
# Money and flags are strict: `"budget": true`, `"budget": "10"` and `"per_capita": "yes"` are
# refused (422) instead of read as 1.0 / 10.0 / true.
MAX_MONEY = 1e15
# Numeric features: finite with |x| <= MAX_FEATURE_ABS. Larger numbers are refused where the
# request is parsed (422 naming the customer and the feature): the model computes in float32
# (max 3.4e38), and its normalisation and layers overflow long before that.
MAX_FEATURE_ABS = MAX_ABS
# A customer carries at most MAX_FEATURE_KEYS features with names of at most MAX_KEY_LENGTH
# characters; only the model's own features are stored with its decision.
MAX_FEATURE_KEYS = 1024
MAX_KEY_LENGTH = 256
MAX_TEXT_VALUE = 4096
# Timestamps in bodies and filters must say their zone or be UTC-naive, and lie in this range
# once converted to UTC (so no arithmetic on them can leave the calendar).
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def unstorable(text: str) -> str | None:
    """Why a database cannot store `text` (NUL, lone surrogate), or None when it can."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which the database cannot store"
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "contains a lone UTF-16 surrogate, which is not valid Unicode"
    return None


def _storable(text: str) -> str:
    why = unstorable(text)
    if why is not None:
        raise ValueError(why)
    return text


# Text that reaches the database: refused alike on SQLite and PostgreSQL when it cannot be stored.
Text = Annotated[str, AfterValidator(_storable)]


def _in_calendar(value: datetime) -> datetime:
    """Aware -> UTC; refuse instants so near the calendar's ends that arithmetic overflows."""
    try:
        utc = value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise ValueError("timestamp is outside the supported range") from None
    if not MIN_TIME <= utc <= MAX_TIME:
        raise ValueError(
            f"timestamp must lie between {MIN_TIME.isoformat()} and {MAX_TIME.isoformat()}"
        )
    return utc if value.tzinfo is not None else value


# A timestamp query parameter or body field: naive means UTC; aware ones are converted to UTC.
Timestamp = Annotated[datetime, AfterValidator(_in_calendar)]
# Budgets (each model adds its lower bound) and signed amounts (outcomes, margins).
Money = Annotated[float, Field(strict=True, allow_inf_nan=False, le=MAX_MONEY)]
SignedMoney = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_MONEY, le=MAX_MONEY)]
Flag = Annotated[bool, Field(strict=True)]
StrictInt = Annotated[int, Field(strict=True)]


def _check_json_text(value: Any, where: str) -> None:
    """Every string (keys too) of a JSON document must be storable; numbers must be finite."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            why = unstorable(item)
            if why is not None:
                raise ValueError(f"{at} {why}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{at} is not a finite number")
        elif isinstance(item, dict):
            for k, v in item.items():
                stack.append((k, f"{at} key"))
                stack.append((v, f"{at}.{k}"))
        elif isinstance(item, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))


class ErrorBody(BaseModel):
    """Every error answer: `error` (its class) and `detail` (what is wrong, naming the culprit),
    plus machine-readable extras some errors add."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="Error class, e.g. InvalidInput, RequestValidationError")
    detail: str = Field(description="What is wrong, naming the field or customer")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Validation errors (422): loc, msg and type per bad field"
    )
    min_budget: float | None = Field(
        None, description="Infeasible budget: the cheapest assignment's total cost"
    )
    field: str | None = Field(None, description="The request field at fault")
    customer_id: str | None = Field(None, description="The customer at fault")
    status: str | None = Field(None, description="A campaign's state (paused, finished, ...)")
    job_id: str | None = Field(None, description="The job in the way (409)")
    remaining_budget: float | None = Field(None, description="A campaign's remaining budget")
    request_id: str | None = Field(None, description="Unexpected errors: the id in the logs")


_CUSTOMER_EXAMPLE: dict[str, Any] = {
    "id": "c-1001",
    "features": {"recency": 3, "history": 142.5, "mens": 1, "womens": 0, "channel": "Web"},
}


class CustomerIn(BaseModel):
    """One customer to allocate: an id unique within the request and raw feature values."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CUSTOMER_EXAMPLE]})

    id: Text = Field(min_length=1, max_length=128)
    features: dict[str, FeatureValue] = Field(
        max_length=MAX_FEATURE_KEYS,
        description="Raw feature name -> value, as in the model's feature spec; numbers must be "
        f"finite with |x| <= {MAX_FEATURE_ABS:g}, unknown categories are allowed; at most "
        f"{MAX_FEATURE_KEYS} keys. Only the model's features are stored with the decision.",
    )

    @model_validator(mode="after")
    def _feature_values(self) -> CustomerIn:
        """Numbers within the accepted range, text the database can store; names the customer
        and the feature."""
        try:
            self._check_features()
        except ValueError as exc:
            raise ValueError(f"customer {self.id!r}: {exc}") from None
        return self

    def _check_features(self) -> None:
        for name, value in self.features.items():
            if len(name) > MAX_KEY_LENGTH or unstorable(name):
                why = unstorable(name) or f"is longer than {MAX_KEY_LENGTH} characters"
                raise ValueError(f"feature name {name[:40]!r} {why}")
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                if not (isinstance(value, int) or math.isfinite(value)):
                    raise ValueError(f"feature {name!r}: {value!r} is not finite")
                if not -MAX_FEATURE_ABS <= value <= MAX_FEATURE_ABS:
                    shown = f"{value:.3g}" if isinstance(value, float) else f"{str(value)[:20]}..."
                    raise ValueError(
                        f"feature {name!r}: {shown} is outside the accepted range "
                        f"[-{MAX_FEATURE_ABS:g}, {MAX_FEATURE_ABS:g}]"
                    )
            elif isinstance(value, str):
                problem = unstorable(value)
                if problem is not None or len(value) > MAX_TEXT_VALUE:
                    problem = problem or f"is longer than {MAX_TEXT_VALUE} characters"
                    raise ValueError(f"feature {name!r}: the value {problem}")


class AllocationCreate(BaseModel):
    """Budget plus customers: the service picks one treatment per customer within the budget."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "budget": 250.0,
                    "campaign": "spring-2026",
                    "customers": [
                        _CUSTOMER_EXAMPLE,
                        {
                            "id": "c-1002",
                            "features": {
                                "recency": 9,
                                "history": 38.0,
                                "mens": 0,
                                "womens": 1,
                                "channel": "Phone",
                            },
                        },
                    ],
                }
            ]
        },
    )

    budget: Money = Field(
        gt=0, description=f"Total budget (> 0, <= {MAX_MONEY:g}); a JSON number, not a string."
    )
    per_capita: Flag = Field(
        False, description="If true, `budget` is per customer; the total is budget x customers."
    )
    customers: list[CustomerIn] = Field(min_length=1)
    campaign: Text | None = Field(None, max_length=128, description="Free label to filter by.")
    model_version: Text | None = Field(
        None, max_length=128, description="A registered version; default: the active one."
    )
    exploration_rate: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True,
        description="Share of customers (each independently) given a uniformly random treatment; "
        "their predicted cost is charged first and the rest of the budget is solved. Default: "
        "DFCL_EXPLORATION_RATE.",
    )  # fmt: skip
    seed: StrictInt | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Seed of the exploration draw (to replay one); default: new.",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> AllocationCreate:
        """A customer listed twice would get two treatments and double-spend."""
        ids = [c.id for c in self.customers]
        if len(set(ids)) != len(ids):
            dup = [i for i, n in Counter(ids).items() if n > 1]
            shown = ", ".join(repr(i) for i in dup[:5]) + (" ..." if len(dup) > 5 else "")
            raise ValueError(f"customer ids must be unique; repeated: {shown}")
        _finite_total("budget", [self.budget], len(self.customers) if self.per_capita else 1)
        return self


def _finite_total(name: str, budgets: list[float], scale: int) -> None:
    """budget x customers (per-capita budgets) must stay a finite, representable total."""
    for budget in budgets:
        total = budget * scale
        if not math.isfinite(total) or abs(total) > MAX_MONEY * 1e6:
            raise ValueError(
                f"{name}: {budget:.6g} per customer x {scale} customers is not a finite total"
            )


class DecisionRead(BaseModel):
    """The treatment chosen for one customer and what the model expects from it."""

    model_config = ConfigDict(from_attributes=True)

    customer_id: str
    treatment: int = Field(description="Treatment index 0..K-1 (0 is usually control).")
    treatment_name: str
    expected_revenue: float
    expected_cost: float
    propensity: float = Field(
        1.0, description="Probability the service chose this treatment for this customer."
    )
    explored: bool = Field(False, description="Treatment drawn at random (exploration).")


class AllocationSummary(BaseModel):
    """An allocation without its decisions (list view)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    campaign: str | None
    model_version: str
    budget: float = Field(description="As requested (total, or per customer if per_capita).")
    per_capita: bool
    budget_total: float = Field(description="Total budget the solver respected.")
    multiplier: float = Field(description="Lagrange multiplier: shadow price of one unit of cost.")
    n_customers: int
    expected_revenue: float
    expected_cost: float
    exploration_rate: float = 0.0
    seed: int | None = Field(None, description="Exploration seed (null without exploration).")
    n_explored: int = 0


class AllocationRead(AllocationSummary):
    """An allocation with one page of its decisions, in request order."""

    decisions: list[DecisionRead]
    decisions_offset: int = 0
    decisions_next_offset: int | None = Field(
        None, description="Pass as `offset` to get the next page; null on the last page."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_page(cls, data: Any) -> Any:
        """Read a service's page (`allocation`, `decisions`, `offset`, `next_offset`) flat."""
        allocation = getattr(data, "allocation", None)
        if allocation is None:
            return data
        return {
            **dict(AllocationSummary.model_validate(allocation)),
            "decisions": data.decisions,
            "decisions_offset": data.offset,
            "decisions_next_offset": data.next_offset,
        }


class AllocationPage(BaseModel):
    """One page of allocations, newest first."""

    items: list[AllocationSummary]
    offset: int
    next_offset: int | None


class ModelVersionRead(BaseModel):
    """A registered model version."""

    model_config = ConfigDict(from_attributes=True)

    version: str
    method: str
    treatments: list[str]
    n_features: int
    onnx_sha256: str
    registered_at: datetime
    activated_at: datetime | None
    is_active: bool
    card: dict[str, Any] = Field(description="The model.json the version was registered with.")


class ModelRegister(BaseModel):
    """A model directory (model.onnx + model.json) on the server's file system."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"path": "runs/bi-dfcl/model"}]}
    )

    path: Text = Field(min_length=1, max_length=4096)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """Ready means the database answers and a model is loaded."""

    ready: bool
    database: bool
    model_version: str | None
    detail: str | None = None


# --- closing the loop: outcomes, retraining, budget what-if -------------------------------


class OutcomeIn(BaseModel):
    """What one allocated customer actually brought in and cost."""

    model_config = ConfigDict(extra="forbid")

    customer_id: Text = Field(min_length=1, max_length=128)
    revenue: SignedMoney = Field(description=f"|revenue| <= {MAX_MONEY:g}; a JSON number.")
    cost: SignedMoney = Field(description=f"|cost| <= {MAX_MONEY:g}; a JSON number.")


class OutcomesCreate(BaseModel):
    """Observed outcomes of customers of one allocation (a later report for a customer wins)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"outcomes": [{"customer_id": "c-1001", "revenue": 54.2, "cost": 3.1}]}]
        },
    )

    outcomes: list[OutcomeIn] = Field(min_length=1)


class OutcomesWritten(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    allocation_id: uuid.UUID
    n_written: int = Field(description="Rows inserted or replaced by this call.")
    n_outcomes: int = Field(description="Outcomes now stored for the allocation.")


class OutcomeRead(BaseModel):
    """A stored outcome with the decision it belongs to."""

    model_config = ConfigDict(from_attributes=True)

    customer_id: str
    revenue: float
    cost: float
    recorded_at: datetime
    treatment: int
    explored: bool
    propensity: float


class OutcomePage(BaseModel):
    """One page of an allocation's outcomes, in request order."""

    model_config = ConfigDict(from_attributes=True)

    allocation_id: uuid.UUID
    items: list[OutcomeRead]
    offset: int
    next_offset: int | None
    n_outcomes: int


class RetrainCreate(BaseModel):
    """Retrain on stored decisions joined with their outcomes (plus optional base tables)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"method": "bi-dfcl", "config": {"epochs": 10}}]},
    )

    method: Text | None = Field(
        None, max_length=32,
        description="Training method (one of TrainConfig's); default DFCL_RETRAIN_METHOD.",
    )  # fmt: skip
    config: dict[str, Any] = Field(
        default_factory=dict,
        description='TrainConfig overrides, e.g. {"epochs": 5}; keys and types are checked '
        "against TrainConfig before the job is queued.",
    )
    base_rct: Text | None = Field(
        None, max_length=4096,
        description="Server path of an RCT table (.csv or .parquet) added to the explored rows.",
    )  # fmt: skip
    base_obs: Text | None = Field(
        None, max_length=4096,
        description="Server path of an OBS table (.csv or .parquet) added to the other rows.",
    )  # fmt: skip
    eval_data: Text | None = Field(
        None, max_length=4096, description="Server path of an extra held-out RCT table."
    )
    margin: SignedMoney | None = Field(
        None,
        description="Activate only if the EOM area beats the champion's by more than this; "
        "default DFCL_RETRAIN_MARGIN.",
    )
    force: Flag = Field(False, description="Activate the new version whatever the comparison.")

    @model_validator(mode="after")
    def _train_config(self) -> RetrainCreate:
        """The method and every config key and type against TrainConfig, before the 202."""
        _check_json_text(self.config, "config")
        check_train_config(self.method, self.config)
        return self


class RetrainRead(BaseModel):
    """A retraining job: state, result, champion/challenger comparison and its log's tail."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: str = Field(description="queued, running, succeeded or failed")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any]
    champion_version: str | None
    new_version: str | None
    activated: bool
    data: dict[str, Any] | None = Field(description="Row counts and fingerprints of the data.")
    metrics: dict[str, Any] | None
    comparison: dict[str, Any] | None
    error: str | None
    log_tail: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_view(cls, data: Any) -> Any:
        """Read a service's job view (`job` row plus `log_tail`) flat; a bare row has no log."""
        job = getattr(data, "job", None)
        if job is None:
            return data
        return {**dict(RetrainRead.model_validate(job)), "log_tail": data.log_tail}


class BudgetCurveCreate(BaseModel):
    """Customers and budgets: what each budget would buy (nothing is stored)."""

    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerIn] = Field(min_length=1)
    budgets: list[StrictFloat] | None = Field(
        None, min_length=1, max_length=200,
        description="Budgets to evaluate (total, or per customer if per_capita); default: "
        "n_budgets points from the cheapest assignment's cost to the spend beyond which more "
        "budget buys nothing.",
    )  # fmt: skip
    n_budgets: StrictInt = Field(10, ge=2, le=200)
    per_capita: Flag = False
    model_version: Text | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _finite_budgets(self) -> BudgetCurveCreate:
        bad = [b for b in self.budgets or () if not (b >= 0 and b <= MAX_MONEY)]
        if bad:
            raise ValueError(f"budgets must be numbers in [0, {MAX_MONEY:g}]; got {bad[:5]}")
        scale = len(self.customers) if self.per_capita else 1
        _finite_total("budgets", list(self.budgets or ()), scale)
        return self


class BudgetPoint(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    budget: float = Field(description="As requested (total, or per customer if per_capita).")
    budget_total: float
    feasible: bool = Field(description="False below the cheapest assignment's cost.")
    expected_revenue: float | None
    expected_cost: float | None
    multiplier: float | None = Field(
        description="Shadow price: expected revenue one more unit of budget buys here."
    )


class BudgetCurveRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model_version: str
    n_customers: int
    per_capita: bool
    min_budget: float = Field(description="Total cost of everyone's cheapest treatment.")
    max_useful_budget: float = Field(
        description="Total cost of everyone's best treatment: more budget buys nothing."
    )
    points: list[BudgetPoint]


# --- campaign-scale allocation jobs ---------------------------------------------------------


class UploadRead(BaseModel):
    """A customer table streamed to the server; name it by `upload_id` in an allocation job."""

    upload_id: uuid.UUID
    format: str = Field(description="parquet or csv")
    bytes: int


class AllocationJobCreate(BaseModel):
    """One budget across a whole customer table (Parquet or CSV), allocated in the background.

    The table has an id column and the model's raw feature columns. Name it by `upload_id`
    (POST /v1/uploads) or, when the server allows it (DFCL_BATCH_INPUT_ROOTS), by a server
    `path` (a file, or a directory of .parquet or .csv files).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "upload_id": "3f1c2a9e-5b7d-4e8f-9a10-1b2c3d4e5f60",
                    "budget": 1.5,
                    "per_capita": True,
                    "campaign": "spring-2026",
                }
            ]
        },
    )

    path: Text | None = Field(
        None, min_length=1, max_length=4096,
        description="Server path under one of DFCL_BATCH_INPUT_ROOTS (file or directory).",
    )  # fmt: skip
    upload_id: uuid.UUID | None = Field(None, description="An upload from POST /v1/uploads.")
    budget: Money = Field(
        ge=0,
        description="Total budget (or per customer if per_capita), <= 1e15; a JSON number.",
    )
    per_capita: Flag = Field(
        False, description="If true, `budget` is per customer; the total is budget x customers."
    )
    model_version: Text | None = Field(
        None, max_length=128, description="A registered version; default: the active one."
    )
    campaign: Text | None = Field(None, max_length=128, description="Free label to filter by.")
    exploration_rate: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True,
        description="As on POST /v1/allocations; default DFCL_EXPLORATION_RATE.",
    )  # fmt: skip
    seed: StrictInt | None = Field(
        None, ge=0, lt=2**63, description="Seed of the exploration draw; default: new."
    )
    id_column: Text = Field(
        "customer_id", min_length=1, max_length=128, description="The customer id column."
    )
    engine: Literal["local", "ray"] | None = Field(
        None, description="Where the passes run; default DFCL_BATCH_ENGINE."
    )

    @model_validator(mode="after")
    def _one_source(self) -> AllocationJobCreate:
        """The table comes from exactly one place."""
        if (self.path is None) == (self.upload_id is None):
            raise ValueError("give exactly one of `path` and `upload_id`")
        return self


class AllocationJobLinks(BaseModel):
    """Where to follow the job and, once it succeeded, its results."""

    self: str
    allocation: str | None = Field(None, description="The stored allocation, once succeeded.")
    decisions: str | None = Field(None, description="Decisions as Parquet, once succeeded.")


class AllocationJobRead(BaseModel):
    """An allocation job: state, progress and, once succeeded, its allocation."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    phase: str = Field(description="queued, reading, solving, writing, storing or done")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any] = Field(description="The request as accepted (defaults filled in).")
    rows_read: int
    rows_scored: int
    progress: float = Field(description="Overall estimate, 0..1.")
    cancel_requested: bool
    allocation_id: uuid.UUID | None = Field(
        description="The stored allocation (GET /v1/allocations/{id}), once succeeded."
    )
    n_customers: int | None
    error: str | None = Field(description="Why it failed, naming column and row for bad input.")
    result: dict[str, Any] | None = Field(
        description="Multiplier, expected totals, exploration and per-phase `timings_s`."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def links(self) -> AllocationJobLinks:
        base = f"/v1/allocation-jobs/{self.id}"
        done = self.status == "succeeded"
        return AllocationJobLinks(
            self=base,
            allocation=f"/v1/allocations/{self.allocation_id}" if self.allocation_id else None,
            decisions=f"{base}/decisions.parquet" if done else None,
        )


class AllocationJobPage(BaseModel):
    """One page of allocation jobs, newest first."""

    items: list[AllocationJobRead]
    offset: int
    next_offset: int | None


# ---------------------------------------------------------------------------- campaigns


def _aware(value: datetime | None, name: str) -> datetime | None:
    """Timestamps must say their zone: a campaign's end is an instant, not a wall-clock time."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} needs a timezone (e.g. 2026-12-24T18:00:00Z)")
    return value


class CampaignCreate(BaseModel):
    """A budget to spend over time on customers as they arrive (POST /v1/campaigns)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "xmas-app", "budget": 50_000.0, "end_at": "2026-12-24T18:00:00Z",
                 "expected_customers": 60_000, "exploration_rate": 0.05}
            ]
        },
    )  # fmt: skip

    name: Text = Field(min_length=1, max_length=128)
    budget: Money = Field(gt=0, description="Total budget (<= 1e15); a JSON number.")
    start_at: Timestamp | None = Field(None, description="Default: now.")
    end_at: Timestamp | None = Field(
        None, description="Pace by time until then (or give expected_customers, or both)."
    )
    expected_customers: StrictInt | None = Field(
        None, ge=1, le=10**12, description="Pace by count: customers expected in all."
    )
    model_version: Text | None = Field(None, max_length=128, description="Default: the active.")
    exploration_rate: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, strict=True)
    seed: StrictInt | None = Field(
        None, ge=0, lt=2**63, description="Exploration seed; default new."
    )
    pacing: Literal["even"] = Field("even", description="Spend evenly over customers/time.")
    plan_multiplier: float | None = Field(
        None, ge=0.0, le=1e6, allow_inf_nan=False, strict=True,
        description="Starting multiplier, if known.",
    )  # fmt: skip
    plan_sample: list[CustomerIn] | None = Field(
        None, min_length=1, max_length=10_000,
        description="Expected customers: the starting multiplier is the batch solve on them "
        "at the pace budget / expected_customers per customer.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> CampaignCreate:
        _aware(self.start_at, "start_at")
        _aware(self.end_at, "end_at")
        if self.plan_multiplier is not None and self.plan_sample is not None:
            raise ValueError("give plan_multiplier or plan_sample, not both")
        return self


class CampaignPatch(BaseModel):
    """Change a running campaign; every change applies to the next decision."""

    model_config = ConfigDict(extra="forbid")

    budget: Money | None = Field(None, ge=0.0)
    end_at: Timestamp | None = None
    expected_customers: StrictInt | None = Field(None, ge=1, le=10**12)
    status: Literal["active", "paused"] | None = None

    @model_validator(mode="after")
    def _check(self) -> CampaignPatch:
        _aware(self.end_at, "end_at")
        return self


class CampaignDecide(BaseModel):
    """Customers arriving now (1-1,000): each gets a treatment at the campaign's multiplier."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"customers": [_CUSTOMER_EXAMPLE]}]}
    )

    customers: list[CustomerIn] = Field(min_length=1, max_length=1_000)

    @model_validator(mode="after")
    def _unique_ids(self) -> CampaignDecide:
        ids = [c.id for c in self.customers]
        if len(set(ids)) != len(ids):
            dup = [i for i, n in Counter(ids).items() if n > 1]
            raise ValueError(f"customer ids must be unique; repeated: {dup[:5]}")
        return self


class CampaignDecisionRead(DecisionRead):
    budget_exhausted: bool = Field(
        False, description="The budget could not pay the chosen arm: the cheapest was given."
    )


class CampaignDecisions(BaseModel):
    """What a decision batch got, and where the campaign stands after it."""

    campaign_id: uuid.UUID
    allocation_id: uuid.UUID = Field(description="The batch is stored as this allocation.")
    multiplier: float = Field(description="The multiplier these customers were decided at.")
    next_multiplier: float | None
    committed_spend: float
    remaining_budget: float
    n_budget_exhausted: int
    decisions: list[CampaignDecisionRead]


class ArmSpendRead(BaseModel):
    """Predicted and realized cost of one arm's decisions, and the calibration they give."""

    treatment: int
    treatment_name: str
    n_decisions: int
    n_outcomes: int
    predicted_cost: float = Field(description="Predicted cost of all its decisions.")
    predicted_cost_with_outcomes: float = Field(description="... of those with outcomes.")
    realized_cost: float = Field(description="Realized cost of those with outcomes.")
    calibration: float = Field(description="Realized / predicted, shrunk towards 1.")
    calibration_se: float | None


class CampaignPoint(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    multiplier: float | None
    committed: float
    realized: float
    predicted: float
    n_decisions: int
    budget: float


class CampaignRead(BaseModel):
    """A campaign's settings, spend and pacing state."""

    id: uuid.UUID
    name: str
    status: str = Field(description="active | paused | finished (past end_at)")
    budget: float
    start_at: datetime
    end_at: datetime | None
    expected_customers: int | None
    model_version: str
    exploration_rate: float
    pacing: str
    plan_source: str = Field(description="multiplier | sample | seen (see the README)")
    plan_multiplier: float | None
    multiplier: float | None
    n_decisions: int
    n_outcomes: int
    n_budget_exhausted: int
    committed_spend: float = Field(
        description="Realized cost where outcomes are in + calibrated expected cost of the rest."
    )
    predicted_spend: float
    realized_spend: float
    remaining_budget: float
    arms: list[ArmSpendRead]
    history: list[CampaignPoint] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class CampaignPage(BaseModel):
    items: list[CampaignRead]
    offset: int
    next_offset: int | None


# ------------------------------------------------------------------- retraining config check


@cache
def _train_config_model() -> type[BaseModel]:
    """A strict pydantic mirror of TrainConfig's fields (training.config is stdlib-only)."""
    from training import config as train_config

    hints = typing.get_type_hints(train_config.TrainConfig)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], None) for f in dataclasses.fields(train_config.TrainConfig)
    }
    return create_model(
        "TrainConfigOverrides", __config__=ConfigDict(extra="forbid", strict=True), **fields
    )


def check_train_config(method: str | None, config: dict[str, Any]) -> None:
    """Raise ValueError naming the key when `method` or `config` would not make a TrainConfig."""
    from training import config as train_config

    if method is not None and method not in train_config.METHODS:
        raise ValueError(f"method must be one of {list(train_config.METHODS)}, got {method!r}")
    try:
        _train_config_model().model_validate_json(json.dumps(config))
    except ValidationError as exc:
        shown = "; ".join(
            f"config.{'.'.join(str(p) for p in e['loc'])}: "
            + ("not a TrainConfig key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()[:5]
        )
        raise ValueError(shown) from None
    chosen = method or config.get("method") or "bi-dfcl"
    try:
        train_config.TrainConfig.from_json({**config, "method": chosen})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config: {exc}") from None
