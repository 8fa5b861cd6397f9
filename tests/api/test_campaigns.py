"""Campaigns (/v1/campaigns): paced real-time decisions on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.registry import Registry
from app.schemas import CampaignDecide, CustomerIn
from app.services import campaigns


def new_campaign(client: TestClient, **overrides: Any) -> dict[str, Any]:
    body = {"name": "spring", "budget": 100.0, "expected_customers": 200, "plan_multiplier": 0.5}
    r = client.post("/v1/campaigns", json={**body, **overrides})
    assert r.status_code == 201, r.text
    return dict(r.json())


def decide(client: TestClient, campaign_id: str, people: list[dict[str, Any]]) -> Any:
    return client.post(f"/v1/campaigns/{campaign_id}/decisions", json={"customers": people})


def spend_in_db(settings: Settings, campaign_id: str) -> tuple[float, int]:
    """Predicted cost and count of every stored decision of the campaign (exact, in SQL)."""
    engine = make_engine(settings)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT coalesce(sum(d.expected_cost), 0), count(*) FROM decisions d "
                "JOIN allocations a ON a.id = d.allocation_id WHERE a.campaign_id = :c"
            ),
            {"c": uuid.UUID(campaign_id) if engine.dialect.name != "sqlite"
             else uuid.UUID(campaign_id).hex},
        ).one()  # fmt: skip
    engine.dispose()
    return float(row[0]), int(row[1])


def test_campaign_decides_paces_and_stores_ordinary_allocations(
    client: TestClient, customers: Any, settings: Settings
) -> None:
    campaign = new_campaign(client)
    assert campaign["status"] == "active" and campaign["multiplier"] == 0.5
    assert campaign["plan_source"] == "multiplier" and campaign["remaining_budget"] == 100.0
    r = decide(client, campaign["id"], customers(20, seed=1))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["multiplier"] == 0.5 and len(out["decisions"]) == 20
    spent = sum(d["expected_cost"] for d in out["decisions"])
    assert out["committed_spend"] == pytest.approx(spent)
    assert out["remaining_budget"] == pytest.approx(100.0 - spent)
    # the batch is an ordinary allocation: readable, with outcomes
    alloc = client.get(f"/v1/allocations/{out['allocation_id']}").json()
    assert alloc["n_customers"] == 20 and alloc["campaign"] == "spring"
    got = client.get(f"/v1/campaigns/{campaign['id']}").json()
    assert got["n_decisions"] == 20 and got["predicted_spend"] == pytest.approx(spent)
    assert sum(a["n_decisions"] for a in got["arms"]) == 20
    assert len(got["history"]) >= 1
    listed = client.get("/v1/campaigns").json()
    assert [c["id"] for c in listed["items"]] == [campaign["id"]]

    # Outcomes: realized cost feeds realized spend and the per-arm calibration.
    first = out["decisions"][:10]
    outcomes = [{"customer_id": d["customer_id"], "revenue": 1.0,
                 "cost": 2.0 * d["expected_cost"]} for d in first]  # fmt: skip
    posted = client.post(f"/v1/allocations/{out['allocation_id']}/outcomes",
                         json={"outcomes": outcomes})  # fmt: skip
    assert posted.status_code in (200, 201), posted.text
    got = client.get(f"/v1/campaigns/{campaign['id']}").json()
    realized = sum(o["cost"] for o in outcomes)
    assert got["realized_spend"] == pytest.approx(realized)
    assert got["n_outcomes"] == 10
    costly = [a for a in got["arms"] if a["n_outcomes"] and a["predicted_cost_with_outcomes"] > 0]
    assert costly and all(1.0 < a["calibration"] < 2.0 for a in costly)  # shrunk towards 1
    # a second report replaces the first one
    again = [{**o, "cost": o["cost"] / 2} for o in outcomes]
    client.post(f"/v1/allocations/{out['allocation_id']}/outcomes", json={"outcomes": again})
    got = client.get(f"/v1/campaigns/{campaign['id']}").json()
    assert got["realized_spend"] == pytest.approx(realized / 2)
    assert got["n_outcomes"] == 10


def test_hard_stop_pause_and_budget_change_act_on_the_next_decision(
    client: TestClient, customers: Any, settings: Settings
) -> None:
    campaign = new_campaign(client, budget=8.0, plan_multiplier=0.0)  # lam 0: wants dear arms
    out = decide(client, campaign["id"], customers(30, seed=2)).json()
    stopped = [d for d in out["decisions"] if d["budget_exhausted"]]
    assert stopped and out["n_budget_exhausted"] == len(stopped)
    cheapest = {d["treatment"] for d in stopped}
    assert cheapest == {0} and all(d["propensity"] == 1.0 for d in stopped)
    assert spend_in_db(settings, campaign["id"])[0] <= 8.0
    # pause: refused clearly, nothing stored
    r = client.patch(f"/v1/campaigns/{campaign['id']}", json={"status": "paused"})
    assert r.status_code == 200 and r.json()["status"] == "paused"
    r = decide(client, campaign["id"], customers(2, seed=3, prefix="p"))
    assert r.status_code == 409 and r.json()["error"] == "Conflict" and "paused" in r.text
    assert spend_in_db(settings, campaign["id"])[1] == 30
    # resume with a larger budget: the next decision can spend again
    r = client.patch(f"/v1/campaigns/{campaign['id']}", json={"status": "active", "budget": 1e4})
    assert r.status_code == 200 and r.json()["remaining_budget"] > 9_000
    out = decide(client, campaign["id"], customers(5, seed=4, prefix="q")).json()
    assert out["n_budget_exhausted"] == 0
    assert any(d["treatment"] != 0 for d in out["decisions"])
    # a budget cut to what is committed: nothing left even for the cheapest arms -> 409
    spent = client.get(f"/v1/campaigns/{campaign['id']}").json()["committed_spend"]
    client.patch(f"/v1/campaigns/{campaign['id']}", json={"budget": spent})
    r = decide(client, campaign["id"], customers(2, seed=5, prefix="z"))
    assert r.status_code == 409 and r.json()["status"] == "exhausted", r.text
    assert spend_in_db(settings, campaign["id"]) == pytest.approx((spent, 35))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"budget": 10.0, "expected_customers": 5}, "name"),
        ({"name": "x", "budget": -1.0, "expected_customers": 5}, "budget"),
        ({"name": "x", "budget": 10.0}, "expected_customers"),
        ({"name": "x", "budget": 10.0, "end_at": "2030-01-01T00:00:00"}, "end_at"),
        ({"name": "x", "budget": 10.0, "start_at": "2030-01-02T00:00:00Z",
          "end_at": "2030-01-01T00:00:00Z"}, "end_at"),
        ({"name": "x", "budget": 10.0, "expected_customers": 5, "exploration_rate": 2},
         "exploration_rate"),
        ({"name": "x", "budget": 10.0, "expected_customers": 5, "plan_multiplier": 1.0,
          "plan_sample": [{"id": "a", "features": {}}]}, "plan"),
        ({"name": "x", "budget": 10.0, "expected_customers": 5, "model_version": "nope"}, "nope"),
    ],
)  # fmt: skip
def test_bad_campaigns_are_refused_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/campaigns", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text and set(r.json()) >= {"error", "detail"}
    assert client.get("/v1/campaigns").json()["items"] == []


def test_bad_decision_batches_write_nothing(
    client: TestClient, customers: Any, settings: Settings
) -> None:
    campaign = new_campaign(client)
    people = customers(3, seed=5)
    people[1]["features"]["history"] = "lots"
    r = decide(client, campaign["id"], people)
    assert r.status_code == 422 and "history" in r.text
    r = decide(client, campaign["id"], [])
    assert r.status_code == 422 and "customers" in r.text
    r = decide(client, str(uuid.uuid4()), customers(1))
    assert r.status_code == 404
    assert spend_in_db(settings, campaign["id"]) == (0.0, 0)
    assert client.get(f"/v1/campaigns/{campaign['id']}").json()["n_decisions"] == 0


def test_sample_plan_sets_the_first_multiplier(client: TestClient, customers: Any) -> None:
    campaign = new_campaign(
        client, plan_multiplier=None, plan_sample=customers(300, seed=6), expected_customers=300,
        budget=300.0,
    )  # fmt: skip
    assert campaign["plan_source"] == "sample" and campaign["multiplier"] > 0


def test_fifty_threads_never_push_committed_spend_past_the_budget(
    client: TestClient, customers: Any, settings: Settings
) -> None:
    """Five engines (as five processes would have) x ten threads, one campaign; exact check."""
    campaign = new_campaign(client, budget=40.0, plan_multiplier=0.0, expected_customers=200)
    cid = uuid.UUID(campaign["id"])
    engines = [make_engine(settings) for _ in range(5)]
    factories = [make_sessionmaker(e) for e in engines]
    registry = Registry(settings.models_dir)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        people = [CustomerIn(**c) for c in customers(4, seed=100 + i, prefix=f"t{i}-")]
        try:
            with factories[i % 5]() as session, session.begin():
                campaigns.decide(session, registry, cid, CampaignDecide(customers=people))
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    assert not errors, errors[:3]
    spent, n = spend_in_db(settings, campaign["id"])
    assert n == 200
    assert spent <= 40.0
    got = client.get(f"/v1/campaigns/{campaign['id']}").json()
    assert got["n_decisions"] == 200 and got["n_budget_exhausted"] > 0
    assert got["predicted_spend"] == pytest.approx(spent)
    assert np.isclose(got["committed_spend"], spent)
