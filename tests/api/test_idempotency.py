"""Idempotency-Key on POST /v1/allocations: replay, 409 on another body, concurrent duplicates."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient


def _counts(client: TestClient) -> tuple[int, int, int]:
    """(allocations, decisions, idempotency records) in the client's database."""
    engine = sa.create_engine(client.app.state.engine.url)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("allocations", "decisions", "idempotency_records")
        )
    engine.dispose()
    return counts  # type: ignore[return-value]


def test_same_key_same_body_replays_without_writing(client: TestClient, customers: Any) -> None:
    body = {"budget": 20.0, "campaign": "idem", "customers": customers(30)}
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/allocations", json=body, headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert _counts(client) == (1, 30, 1)

    # Same request, keys in another order and a default spelled out: same canonical body.
    again = {"customers": body["customers"], "per_capita": False, **body}
    second = client.post("/v1/allocations", json=again, headers=headers)
    assert second.status_code == 201 and second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content  # the original response, byte for byte
    assert _counts(client) == (1, 30, 1)  # nothing new written

    # Without a key, or with another key, the same body is a new allocation.
    assert client.post("/v1/allocations", json=body).json()["id"] != first.json()["id"]
    other = client.post("/v1/allocations", json=body, headers={"Idempotency-Key": "order-43"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert _counts(client) == (3, 90, 2)


def test_same_key_different_body_is_409(client: TestClient, customers: Any) -> None:
    headers = {"Idempotency-Key": "k-1"}
    body = {"budget": 20.0, "customers": customers(10)}
    assert client.post("/v1/allocations", json=body, headers=headers).status_code == 201
    r = client.post("/v1/allocations", json={**body, "budget": 21.0}, headers=headers)
    assert r.status_code == 409 and r.json()["error"] == "Conflict"
    assert "k-1" in r.json()["detail"] and "different request" in r.json()["detail"]
    assert _counts(client) == (1, 10, 1)


def test_keys_are_per_api_key(
    client: TestClient, db_url: str, new_key: Any, customers: Any
) -> None:
    """Two clients choosing the same Idempotency-Key do not see each other's responses."""
    body = {"budget": 20.0, "customers": customers(10)}
    headers = {"Idempotency-Key": "shared-name"}
    mine = client.post("/v1/allocations", json=body, headers=headers)
    theirs = client.post(
        "/v1/allocations",
        json=body,
        headers={**headers, "Authorization": f"Bearer {new_key(db_url, 'allocate')}"},
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_errors_are_not_stored(client: TestClient, customers: Any) -> None:
    """A refused request may be corrected and retried under the same key."""
    headers = {"Idempotency-Key": "fix-me"}
    r = client.post(
        "/v1/allocations", json={"budget": 0.01, "customers": customers(5)}, headers=headers
    )
    assert r.status_code == 422  # infeasible budget
    fixed = client.post(
        "/v1/allocations", json={"budget": 10.0, "customers": customers(5)}, headers=headers
    )
    assert fixed.status_code == 201
    assert _counts(client) == (1, 5, 1)


def test_bad_keys_are_refused(client: TestClient, customers: Any) -> None:
    body = {"budget": 10.0, "customers": customers(3)}
    for key in ("x" * 256, "with space", ""):
        r = client.post("/v1/allocations", json=body, headers={"Idempotency-Key": key})
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"], key
    assert _counts(client) == (0, 0, 0)


def test_expired_record_is_replaced(client: TestClient, customers: Any) -> None:
    headers = {"Idempotency-Key": "old"}
    body = {"budget": 10.0, "customers": customers(3)}
    first = client.post("/v1/allocations", json=body, headers=headers).json()
    engine = sa.create_engine(client.app.state.engine.url)  # type: ignore[attr-defined]
    with engine.begin() as conn:
        past = datetime.now(UTC) - timedelta(hours=25)
        stamp = past.replace(tzinfo=None) if engine.dialect.name == "sqlite" else past
        conn.execute(sa.text("UPDATE idempotency_records SET created_at = :t"), {"t": stamp})
    engine.dispose()
    second = client.post("/v1/allocations", json={**body, "budget": 11.0}, headers=headers)
    assert second.status_code == 201 and second.json()["id"] != first["id"]
    assert _counts(client) == (2, 6, 1)


@pytest.mark.parametrize("same_body", [True, False])
def test_concurrent_duplicates_write_once(
    client: TestClient, customers: Any, same_body: bool
) -> None:
    """Eight simultaneous requests with one key: one allocation; the others replay it or 409."""
    n = 8
    start = threading.Barrier(n)
    results: list[Any] = [None] * n

    def send(i: int) -> None:
        budget = 50.0 if same_body else 50.0 + i
        body = {"budget": budget, "customers": customers(200)}
        start.wait()
        results[i] = client.post("/v1/allocations", json=body, headers={"Idempotency-Key": "race"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(r.status_code for r in results)
    assert _counts(client) == (1, 200, 1)
    if same_body:
        assert statuses == [201] * n
        assert len({r.json()["id"] for r in results}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in results) == n - 1
    else:
        assert statuses == [201] + [409] * (n - 1)


def test_outcomes_honour_the_key(client: TestClient, customers: Any) -> None:
    alloc = client.post("/v1/allocations", json={"budget": 10.0, "customers": customers(4)})
    url = f"/v1/allocations/{alloc.json()['id']}/outcomes"
    body = {"outcomes": [{"customer_id": "c0", "revenue": 3.0, "cost": 1.0}]}
    headers = {"Idempotency-Key": "outcome-batch-1"}
    first = client.post(url, json=body, headers=headers)
    assert first.status_code == 200 and first.json()["n_written"] == 1
    again = client.post(url, json=body, headers=headers)
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    changed = {"outcomes": [{"customer_id": "c0", "revenue": 4.0, "cost": 1.0}]}
    r = client.post(url, json=changed, headers=headers)
    assert r.status_code == 409
    stored = client.get(url).json()
    assert [o["revenue"] for o in stored["items"]] == [3.0]  # the replay wrote nothing
