"""Issue 16, validation: every class of input that used to reach a 500 (or a wrong parse) is a
422 naming the field, alike on SQLite and PostgreSQL (each test runs on both via `db_url`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.schemas import MAX_FEATURE_ABS, MAX_FEATURE_KEYS


def _refused(r: Any, *names: str) -> dict[str, Any]:
    """A JSON 422 {error, detail} whose detail names every one of `names`."""
    assert r.status_code == 422, r.text
    body = dict(r.json())
    assert set(body) >= {"error", "detail"}, body
    for name in names:
        assert name in body["detail"], (name, body["detail"])
    return body


def _campaign(client: TestClient, **overrides: Any) -> Any:
    body = {"name": "spring", "budget": 100.0, "expected_customers": 200, "plan_multiplier": 0.5}
    return client.post("/v1/campaigns", json={**body, **overrides})


# ---------------------------------------------------- numbers finite in JSON, not after arithmetic


@pytest.mark.parametrize("budget", [1e308, 1.7e308, 1e16])
def test_budget_overflowing_per_capita_or_beyond_money_range(
    client: TestClient, customers: Any, budget: float
) -> None:
    people = customers(2)
    body = {"budget": budget, "per_capita": True, "customers": people}
    _refused(client.post("/v1/allocations", json=body), "budget")
    curve = {"customers": people, "budgets": [budget], "per_capita": True}
    _refused(client.post("/v1/budget-curve", json=curve), "budgets")
    _refused(_campaign(client, budget=budget), "budget")
    outcome = {"customer_id": "c0", "revenue": budget, "cost": 1.0}
    r = client.post("/v1/allocations", json={"budget": 10.0, "customers": people})
    assert r.status_code == 201, r.text
    path = f"/v1/allocations/{r.json()['id']}/outcomes"
    _refused(client.post(path, json={"outcomes": [outcome]}), "revenue")


@pytest.mark.parametrize(
    "value",
    [1e308, -1e308, MAX_FEATURE_ABS * 10, 10**400, -(10**400), 2**70],
    ids=["1e308", "-1e308", "above-range", "400-digits", "minus-400-digits", "2^70"],
)
def test_feature_values_outside_the_accepted_range(
    client: TestClient, customers: Any, value: float
) -> None:
    people = customers(3)
    people[1]["features"]["history"] = value
    body = {"budget": 100.0, "customers": people}
    for path, payload in (
        ("/v1/allocations", body),
        ("/v1/budget-curve", {"customers": people}),
    ):
        b = _refused(client.post(path, json=payload), "history", "customers.1")
        assert b["error"] == "RequestValidationError"
    campaign = _campaign(client)
    assert campaign.status_code == 201, campaign.text
    r = client.post(f"/v1/campaigns/{campaign.json()['id']}/decisions", json={"customers": people})
    _refused(r, "history")
    # The edge of the range is accepted.
    people[1]["features"]["history"] = MAX_FEATURE_ABS
    assert client.post("/v1/allocations", json=body).status_code == 201


def test_core_encoder_refuses_what_float32_cannot_hold() -> None:
    """Outside the service (jobs, training), the encoder names the row instead of overflowing."""
    from app.core.features import FeatureError, FeatureSpec

    spec = FeatureSpec(numeric=("x",))
    for value in (1e308, 10**400):
        with pytest.raises(FeatureError, match="row 1 is out of range"):
            spec.encode_records([{"x": 1.0}, {"x": value}])


# ------------------------------------------------------------ strict types for money and flags


@pytest.mark.parametrize(
    "field, value",
    [
        ("budget", True),
        ("budget", "100"),
        ("budget", "1e3"),
        ("per_capita", "yes"),
        ("per_capita", 1),
        ("per_capita", "true"),
        ("seed", 1.0),
        ("exploration_rate", "0.1"),
    ],
)
def test_lax_values_refused_on_allocations(
    client: TestClient, customers: Any, field: str, value: Any
) -> None:
    body = {"budget": 100.0, "customers": customers(2), field: value}
    _refused(client.post("/v1/allocations", json=body), field)


def test_strict_money_and_flags_on_every_request_model(
    client: TestClient, customers: Any, tmp_path: Any
) -> None:
    people = customers(2)
    _refused(client.post("/v1/budget-curve", json={"customers": people, "per_capita": "yes"}))
    _refused(client.post("/v1/budget-curve", json={"customers": people, "budgets": [True]}))
    _refused(client.post("/v1/budget-curve", json={"customers": people, "budgets": ["5"]}))
    _refused(_campaign(client, budget=True), "budget")
    _refused(_campaign(client, budget="100"), "budget")
    _refused(client.post("/v1/allocation-jobs", json={"upload_id": None, "budget": True}))
    job = {"path": str(tmp_path), "budget": 1.0, "per_capita": "yes"}
    _refused(client.post("/v1/allocation-jobs", json=job), "per_capita")
    _refused(client.post("/v1/retrain", json={"force": "yes"}), "force")
    _refused(client.post("/v1/retrain", json={"margin": True}), "margin")
    r = client.post("/v1/allocations", json={"budget": 10.0, "customers": people})
    path = f"/v1/allocations/{r.json()['id']}/outcomes"
    for bad in ({"revenue": True}, {"cost": "1.5"}):
        outcome = {"customer_id": "c0", "revenue": 1.0, "cost": 1.0, **bad}
        _refused(client.post(path, json={"outcomes": [outcome]}), next(iter(bad)))
    campaign = _campaign(client).json()
    _refused(client.patch(f"/v1/campaigns/{campaign['id']}", json={"budget": True}), "budget")
    # Integers are numbers: a budget of 100 (no decimal point) is fine.
    ok = client.post("/v1/allocations", json={"budget": 100, "customers": people})
    assert ok.status_code == 201, ok.text


# ------------------------------------------------------------ timestamps near the calendar's ends


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-12:00",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59",
        "0001-01-01T00:00:00Z",
    ],
)
def test_timestamps_near_the_calendar_ends(client: TestClient, value: str) -> None:
    for name in ("created_before", "created_after"):
        _refused(client.get("/v1/allocations", params={name: value}), name)
    _refused(_campaign(client, end_at=value), "end_at")
    ok = client.get("/v1/allocations", params={"created_before": "2999-01-01T00:00:00-12:00"})
    assert ok.status_code == 200, ok.text


# ------------------------------------------------------------- text no database can store


def _send(client: TestClient, method: str, path: str, body: Any) -> Any:
    """JSON with non-ASCII escaped (\\ud800 stays an escape, as a hostile client sends it)."""
    headers = {"Content-Type": "application/json"}
    return client.request(method, path, content=json.dumps(body), headers=headers)


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"], ids=["nul", "lone-surrogate"])
def test_unstorable_text_refused_alike(client: TestClient, customers: Any, bad: str) -> None:
    people = customers(2)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/allocations", {"customers": [{**people[0], "id": bad}]}, "id"),
        ("/v1/allocations", {"customers": people, "campaign": bad}, "campaign"),
        ("/v1/allocations", {"customers": people, "model_version": bad}, "model_version"),
    ]
    channel = [{**people[0], "features": {**people[0]["features"], "channel": bad}}]
    cases.append(("/v1/allocations", {"customers": channel}, "channel"))
    junk_key = [{**people[0], "features": {**people[0]["features"], bad: 1}}]
    cases.append(("/v1/allocations", {"customers": junk_key}, "feature name"))
    for path, body, name in cases:
        _refused(_send(client, "POST", path, {"budget": 100.0, **body}), name)
    campaign = {"name": bad, "budget": 100.0, "expected_customers": 200}
    _refused(_send(client, "POST", "/v1/campaigns", campaign), "name")
    retrain = {"config": {"extra": {"note": bad}}}
    _refused(_send(client, "POST", "/v1/retrain", retrain), "config")
    job = {"path": bad, "budget": 1.0}
    _refused(_send(client, "POST", "/v1/allocation-jobs", job), "path")
    r = client.post("/v1/allocations", json={"budget": 10.0, "customers": people})
    path = f"/v1/allocations/{r.json()['id']}/outcomes"
    outcome = {"customer_id": bad, "revenue": 1.0, "cost": 1.0}
    _refused(_send(client, "POST", path, {"outcomes": [outcome]}), "customer_id")


def test_nul_in_url_filters_and_path_parameters(client: TestClient) -> None:
    for url in (
        "/v1/allocations?campaign=a%00b",
        "/v1/allocations?model_version=%00",
        "/v1/models/v%00/activate",
    ):
        r = client.post(url) if url.endswith("activate") else client.get(url)
        b = _refused(r, "NUL")
        assert b["error"] == "InvalidInput" and r.headers["x-request-id"]


# ----------------------------------------------------- extra feature keys are not stored


def test_only_the_models_features_are_stored(
    client: TestClient, customers: Any, db_url: str
) -> None:
    people = customers(2)
    people[0]["features"].update({f"junk{i}": i for i in range(MAX_FEATURE_KEYS - 10)})
    r = client.post("/v1/allocations", json={"budget": 100.0, "customers": people})
    assert r.status_code == 201, r.text
    campaign = _campaign(client).json()
    r = client.post(f"/v1/campaigns/{campaign['id']}/decisions", json={"customers": people})
    assert r.status_code == 201, r.text
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT features FROM decisions")).scalars().all()
    finally:
        engine.dispose()
    assert len(stored) == 4
    for features in stored:
        keys = set(features if isinstance(features, dict) else json.loads(features))
        assert keys == {"recency", "history", "channel"}
    # More keys than the cap: refused at parse time, naming the field.
    people[0]["features"].update({f"more{i}": i for i in range(20)})
    r = client.post("/v1/allocations", json={"budget": 100.0, "customers": people})
    _refused(r, "features")
