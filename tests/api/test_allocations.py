"""POST/GET /v1/allocations on SQLite and PostgreSQL: results, storage, and every error."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.main import create_app


def post_raw(client: TestClient, body: dict[str, Any]) -> Any:
    """POST with Python's JSON encoder, which writes NaN/Infinity literals as some clients do."""
    return client.post(
        "/v1/allocations", content=json.dumps(body), headers={"content-type": "application/json"}
    )


def test_allocation_respects_budget_and_is_stored(client: TestClient, customers: Any) -> None:
    body = {"budget": 120.0, "campaign": "spring", "customers": customers(200)}
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["model_version"] == "tiny-v1"
    assert out["n_customers"] == 200 and len(out["decisions"]) == 200
    assert out["budget_total"] == 120.0 and out["expected_cost"] <= 120.0 + 1e-9
    assert out["multiplier"] >= 0.0
    decisions = out["decisions"]
    assert [d["customer_id"] for d in decisions] == [c["id"] for c in body["customers"]]
    names = ["control", "email", "discount"]
    assert all(names[d["treatment"]] == d["treatment_name"] for d in decisions)
    assert math.isclose(
        sum(d["expected_cost"] for d in decisions), out["expected_cost"], rel_tol=1e-6
    )
    assert math.isclose(
        sum(d["expected_revenue"] for d in decisions), out["expected_revenue"], rel_tol=1e-6
    )
    # A bigger budget buys at least as much expected revenue.
    richer = client.post("/v1/allocations", json={**body, "budget": 400.0}).json()
    assert richer["expected_revenue"] >= out["expected_revenue"] - 1e-9

    stored = client.get(f"/v1/allocations/{out['id']}")
    assert stored.status_code == 200
    assert stored.json()["decisions"] == decisions
    assert stored.json()["expected_revenue"] == pytest.approx(out["expected_revenue"])


def test_timings_header_splits_the_work(client: TestClient, customers: Any) -> None:
    r = client.post("/v1/allocations", json={"budget": 50.0, "customers": customers(50)})
    stages = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
    assert set(stages) == {"encode", "infer", "solve", "respond", "db", "commit", "total"}
    assert float(stages["total"]) >= sum(float(v) for k, v in stages.items() if k != "total")
    assert all(float(v) >= 0 for v in stages.values())


def test_per_capita_budget(client: TestClient, customers: Any) -> None:
    r = client.post(
        "/v1/allocations", json={"budget": 0.5, "per_capita": True, "customers": customers(40)}
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["budget_total"] == pytest.approx(20.0)
    assert out["expected_cost"] <= 20.0 + 1e-9 and out["per_capita"] is True


def test_decision_pages_and_unknown_allocation(client: TestClient, customers: Any) -> None:
    created = client.post("/v1/allocations", json={"budget": 30.0, "customers": customers(25)})
    aid = created.json()["id"]
    first = client.get(f"/v1/allocations/{aid}", params={"limit": 10}).json()
    assert len(first["decisions"]) == 10 and first["decisions_next_offset"] == 10
    last = client.get(f"/v1/allocations/{aid}", params={"limit": 10, "offset": 20}).json()
    assert len(last["decisions"]) == 5 and last["decisions_next_offset"] is None
    assert last["decisions"] == created.json()["decisions"][20:]

    r = client.get(f"/v1/allocations/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    assert client.get("/v1/allocations/not-a-uuid").status_code == 422


def test_list_filters_and_pages(client: TestClient, customers: Any) -> None:
    ids = []
    for i in range(5):
        campaign = "a" if i % 2 == 0 else "b"
        body = {"budget": 10.0, "campaign": campaign, "customers": customers(5, seed=i)}
        ids.append(client.post("/v1/allocations", json=body).json()["id"])
    page = client.get("/v1/allocations", params={"campaign": "a", "limit": 2}).json()
    assert [item["id"] for item in page["items"]] == [ids[4], ids[2]]  # newest first
    assert page["next_offset"] == 2
    rest = client.get("/v1/allocations", params={"campaign": "a", "limit": 2, "offset": 2}).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]] and rest["next_offset"] is None
    assert "decisions" not in page["items"][0]

    by_model = client.get("/v1/allocations", params={"model_version": "tiny-v1"}).json()
    assert len(by_model["items"]) == 5
    assert client.get("/v1/allocations", params={"model_version": "nope"}).json()["items"] == []

    created = [client.get(f"/v1/allocations/{i}").json()["created_at"] for i in ids]
    window = {"created_after": created[1], "created_before": created[3]}
    in_window = client.get("/v1/allocations", params=window).json()["items"]
    assert sorted(item["id"] for item in in_window) == sorted(ids[1:3])


@pytest.mark.parametrize(
    ("value", "what"),
    [(float("nan"), "not finite"), (float("inf"), "not finite"), ("x", "numeric")],
)
def test_bad_feature_value_names_customer_and_feature(
    client: TestClient, value: object, what: str, customers: Any
) -> None:
    body = {"budget": 10.0, "customers": customers(4)}
    body["customers"][2]["features"]["history"] = value
    r = post_raw(client, body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "'c2'" in detail and "history" in detail and what in detail
    assert r.json()["customer_id"] == "c2"


def test_missing_feature_names_customer_and_feature(client: TestClient, customers: Any) -> None:
    body = {"budget": 10.0, "customers": customers(4)}
    del body["customers"][3]["features"]["recency"]
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 422
    assert "'c3'" in r.json()["detail"] and "recency" in r.json()["detail"]


def test_unknown_category_is_not_an_error(client: TestClient, customers: Any) -> None:
    body = {"budget": 10.0, "customers": customers(3)}
    body["customers"][0]["features"]["channel"] = "Carrier pigeon"
    assert client.post("/v1/allocations", json=body).status_code == 201


@pytest.mark.parametrize("budget", [0.0, -5.0, float("nan"), float("inf")])
def test_budget_must_be_positive_and_finite(
    client: TestClient, budget: float, customers: Any
) -> None:
    r = post_raw(client, {"budget": budget, "customers": customers(3)})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "budget"]


def test_infeasible_budget_states_minimum(client: TestClient, customers: Any) -> None:
    body = {"budget": 0.01, "customers": customers(30)}
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 422
    out = r.json()
    assert out["error"] == "InfeasibleBudget" and out["min_budget"] > 0.01
    assert "minimum feasible budget" in out["detail"]
    ok = client.post("/v1/allocations", json={**body, "budget": out["min_budget"] * (1 + 1e-9)})
    assert ok.status_code == 201
    assert all(d["treatment"] == 0 for d in ok.json()["decisions"])  # cheapest arm for everyone


def test_duplicate_ids_rejected(client: TestClient, customers: Any) -> None:
    body = {"budget": 10.0, "customers": customers(3) + customers(1)}
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 422 and "'c0'" in r.json()["detail"]


def test_too_many_customers_is_413(client: TestClient, customers: Any) -> None:
    r = client.post("/v1/allocations", json={"budget": 1e6, "customers": customers(2_001)})
    assert r.status_code == 413
    assert "2001" in r.json()["detail"] and "2000" in r.json()["detail"]


def test_body_too_large_is_413(settings: Any, auth_headers: dict[str, str]) -> None:
    small = settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(small), headers=auth_headers) as client:
        r = client.post(
            "/v1/allocations", content=b"x" * 5000, headers={"content-type": "application/json"}
        )
    assert r.status_code == 413  # refused while streaming, before any JSON parsing


def test_unknown_route_uses_error_shape(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json() == {"error": "NotFound", "detail": "Not Found"}
    r = client.delete("/v1/allocations")
    assert r.status_code == 405 and r.json()["error"] == "MethodNotAllowed"


def test_empty_and_malformed_bodies(client: TestClient, customers: Any) -> None:
    assert client.post("/v1/allocations", json={"budget": 1.0, "customers": []}).status_code == 422
    r = client.post("/v1/allocations", json={"budget": 1.0, "customers": customers(1), "x": 1})
    assert r.status_code == 422  # unknown fields are refused, not ignored
    r = client.post(
        "/v1/allocations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


def test_named_model_version(
    client: TestClient, model_sources: dict[str, Any], customers: Any
) -> None:
    assert client.post("/v1/models", json={"path": str(model_sources["v2"])}).status_code == 201
    body = {"budget": 10.0, "customers": customers(5), "model_version": "tiny-v2"}
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 201 and r.json()["model_version"] == "tiny-v2"
    r = client.post("/v1/allocations", json={**body, "model_version": "tiny-v9"})
    assert r.status_code == 404 and "tiny-v9" in r.json()["detail"]


def test_no_model_is_503(bare_client: TestClient, customers: Any) -> None:
    r = bare_client.post("/v1/allocations", json={"budget": 10.0, "customers": customers(3)})
    assert r.status_code == 503
    assert "no model version is active" in r.json()["detail"]


def test_failed_write_leaves_nothing(
    client: TestClient, settings: Any, db_url: str, customers: Any, auth_headers: dict[str, str]
) -> None:
    """A database error on the 3rd decision row rolls back the allocation and all its rows."""
    engine = sa.create_engine(client.app.state.engine.url)  # type: ignore[attr-defined]
    pg = engine.dialect.name == "postgresql"
    setup = (
        [
            "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'boom'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER boom BEFORE INSERT ON decisions FOR EACH ROW "
            "WHEN (NEW.customer_id = 'c2') EXECUTE FUNCTION boom()",
        ]
        if pg
        else [
            "CREATE TRIGGER boom BEFORE INSERT ON decisions WHEN NEW.customer_id = 'c2' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        ]
    )
    teardown = (
        ["DROP TRIGGER boom ON decisions", "DROP FUNCTION boom()"] if pg else ["DROP TRIGGER boom"]
    )
    with engine.begin() as conn:
        for stmt in setup:
            conn.exec_driver_sql(stmt)
    try:
        with TestClient(
            create_app(settings), raise_server_exceptions=False, headers=auth_headers
        ) as fresh:
            r = fresh.post("/v1/allocations", json={"budget": 10.0, "customers": customers(5)})
        assert r.status_code == 500
    finally:
        with engine.begin() as conn:
            for stmt in teardown:
                conn.exec_driver_sql(stmt)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM allocations")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one() == 0
    engine.dispose()


def test_decisions_stored_in_bulk(client: TestClient, customers: Any) -> None:
    """Every decision row lands with its expectations and the deterministic propensity."""
    body = {"budget": 800.0, "customers": customers(1_500)}
    out = client.post("/v1/allocations", json=body).json()
    engine = sa.create_engine(client.app.state.engine.url)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT position, customer_id, treatment, expected_cost, propensity, explored "
                "FROM decisions ORDER BY position"
            )
        ).all()
    engine.dispose()
    assert len(rows) == 1_500
    assert [r.customer_id for r in rows] == [c["id"] for c in body["customers"]]
    assert np.array_equal([r.treatment for r in rows], [d["treatment"] for d in out["decisions"]])
    assert sum(r.expected_cost for r in rows) <= 800.0 + 1e-9
    assert all(r.propensity == 1.0 and not r.explored for r in rows)


def test_stored_decisions_keep_awkward_ids_and_feature_text(
    client: TestClient, customers: Any, settings: Any
) -> None:
    """The bulk write (COPY in CSV on PostgreSQL, executemany on SQLite) must round-trip
    separators, quotes, newlines and non-ASCII text in ids and categorical features."""
    body = {"budget": 20.0, "customers": customers(4)}
    awkward = ["a,b", 'say "hi"', "line\nbreak", "ünïcødé ✓"]
    for c, text in zip(body["customers"], awkward, strict=True):
        c["id"] = text
        c["features"]["channel"] = text
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 201, r.text
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT position, customer_id, features, explored FROM decisions "
                    "WHERE allocation_id = :a ORDER BY position"
                ),
                {"a": uuid.UUID(r.json()["id"]).hex
                 if engine.dialect.name == "sqlite" else r.json()["id"]},
            ).all()  # fmt: skip
    finally:
        engine.dispose()
    assert [row.position for row in rows] == [0, 1, 2, 3]
    assert [row.customer_id for row in rows] == awkward
    stored = [f if isinstance(f, dict) else json.loads(f) for f in (row.features for row in rows)]
    assert [f["channel"] for f in stored] == awkward
    assert all(row.explored in (False, 0) for row in rows)
