"""API keys over HTTP: 401 without a valid key, 403 without the scope, the auth switch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_unknown_key_is_401(client: TestClient, customers: Any) -> None:
    body = {"budget": 5.0, "customers": customers(3)}
    for headers in (
        {"Authorization": ""},
        _bearer("dfcl_not-a-key"),
        {"Authorization": "", "X-API-Key": "no"},
    ):
        r = client.post("/v1/allocations", json=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"] == "Unauthorized" and r.headers["www-authenticate"] == "Bearer"
    r = client.get("/v1/allocations", headers={"Authorization": ""})
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    # Probes stay open for orchestrators.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200, path


def test_scopes_are_enforced(
    client: TestClient, db_url: str, new_key: Any, customers: Any, model_sources: dict[str, Path]
) -> None:
    allocate, read = _bearer(new_key(db_url, "allocate")), _bearer(new_key(db_url, "read"))
    body = {"budget": 5.0, "customers": customers(3)}

    created = client.post("/v1/allocations", json=body, headers=allocate)
    assert created.status_code == 201
    r = client.post("/v1/allocations", json=body, headers=read)
    assert r.status_code == 403 and "needs 'allocate'" in r.json()["detail"]

    aid = created.json()["id"]
    assert client.get(f"/v1/allocations/{aid}", headers=read).status_code == 200
    assert client.get("/v1/allocations", headers=read).status_code == 200
    assert client.get("/v1/models", headers=read).status_code == 200
    assert client.get(f"/v1/allocations/{aid}", headers=allocate).status_code == 403

    # Registering and activating models is for admin keys only.
    for headers in (allocate, read):
        r = client.post("/v1/models", json={"path": str(model_sources["v2"])}, headers=headers)
        assert r.status_code == 403 and "'admin'" in r.json()["detail"]
        assert client.post("/v1/models/tiny-v1/activate", headers=headers).status_code == 403
    header_key = {"Authorization": "", "X-API-Key": new_key(db_url, "read")}
    assert client.get("/v1/models", headers=header_key).status_code == 200
    both = _bearer(new_key(db_url, "allocate", "read"))
    assert client.get(f"/v1/allocations/{aid}", headers=both).status_code == 200
    # The fixture's admin key may do everything.
    assert client.post("/v1/models", json={"path": str(model_sources["v2"])}).status_code == 201


def test_auth_can_be_switched_off(settings: Settings, customers: Any) -> None:
    open_settings = settings.model_copy(update={"auth_enabled": False})
    with TestClient(create_app(open_settings)) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/allocations").status_code == 200


def test_openapi_documents_the_keys(bare_client: TestClient) -> None:
    spec = bare_client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    create = spec["paths"]["/v1/allocations"]["post"]
    assert {"401", "403", "409"} <= set(create["responses"]) and create["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_closing_the_loop_endpoints_need_their_scopes(
    client: TestClient, db_url: str, new_key: Any, customers: Any
) -> None:
    allocate, read = _bearer(new_key(db_url, "allocate")), _bearer(new_key(db_url, "read"))
    alloc = client.post("/v1/allocations", json={"budget": 10.0, "customers": customers(3)})
    url = f"/v1/allocations/{alloc.json()['id']}/outcomes"
    body = {"outcomes": [{"customer_id": "c0", "revenue": 1.0, "cost": 0.5}]}
    none = {"Authorization": ""}
    # (method, path, json, key that may, key that may not)
    cases = [
        ("POST", url, body, allocate, read),
        ("GET", url, None, read, allocate),
        ("POST", "/v1/budget-curve", {"customers": customers(3)}, allocate, read),
        ("GET", "/v1/retrain", None, read, allocate),
    ]
    for method, path, payload, allowed, refused in cases:
        assert client.request(method, path, json=payload, headers=none).status_code == 401, path
        assert client.request(method, path, json=payload, headers=refused).status_code == 403
        assert client.request(method, path, json=payload, headers=allowed).status_code < 400, path
    # Retraining is admin-only: refused before anything is queued.
    for headers in (allocate, read):
        r = client.post("/v1/retrain", json={}, headers=headers)
        assert r.status_code == 403 and "'admin'" in r.json()["detail"]
    assert client.get("/v1/retrain", headers=read).json() == []
