"""Requests several API and CLI tests make the same way."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def explored_allocation(client: TestClient, customers: Any, n: int = 30) -> dict[str, Any]:
    """A stored allocation of n customers, half of them explored (seeded): the body as sent."""
    body = {
        "budget": 2.5,
        "per_capita": True,
        "customers": customers(n),
        "exploration_rate": 0.5,
        "seed": 3,
    }
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 201, r.text
    return r.json()
