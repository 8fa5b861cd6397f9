"""Request and response bodies of the HTTP API (pydantic v2), with OpenAPI examples."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

FeatureValue = float | int | str | bool | None

_CUSTOMER_EXAMPLE: dict[str, Any] = {
    "id": "c-1001",
    "features": {"recency": 3, "history": 142.5, "mens": 1, "womens": 0, "channel": "Web"},
}


class CustomerIn(BaseModel):
    """One customer to allocate: an id unique within the request and raw feature values."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_CUSTOMER_EXAMPLE]})

    id: str = Field(min_length=1, max_length=128)
    features: dict[str, FeatureValue] = Field(
        description="Raw feature name -> value, as in the model's feature spec; numbers must be "
        "finite, unknown categories are allowed."
    )


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

    budget: float = Field(gt=0, allow_inf_nan=False, description="Total budget (> 0).")
    per_capita: bool = Field(
        False, description="If true, `budget` is per customer; the total is budget x customers."
    )
    customers: list[CustomerIn] = Field(min_length=1)
    campaign: str | None = Field(None, max_length=128, description="Free label to filter by.")
    model_version: str | None = Field(
        None, max_length=128, description="A registered version; default: the active one."
    )
    exploration_rate: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Share of customers (each independently) given a uniformly random treatment; "
        "their predicted cost is charged first and the rest of the budget is solved. Default: "
        "DFCL_EXPLORATION_RATE.",
    )  # fmt: skip
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="Seed of the exploration draw (to replay one); default: new."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> AllocationCreate:
        """A customer listed twice would get two treatments and double-spend."""
        ids = [c.id for c in self.customers]
        if len(set(ids)) != len(ids):
            dup = [i for i, n in Counter(ids).items() if n > 1]
            shown = ", ".join(repr(i) for i in dup[:5]) + (" ..." if len(dup) > 5 else "")
            raise ValueError(f"customer ids must be unique; repeated: {shown}")
        return self


class DecisionRead(BaseModel):
    """The treatment chosen for one customer and what the model expects from it."""

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

    path: str = Field(min_length=1, max_length=4096)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """Ready means the database answers and a model is loaded."""

    ready: bool
    database: bool
    model_version: str | None
    detail: str | None = None
