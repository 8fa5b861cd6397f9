"""Issue 16, validation: every error answer is JSON {error, detail}, an unexpected 500 included
(its body and the log name the request id), on both databases."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


@pytest.fixture
def crashing_client(settings: Settings, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    """The service plus a route that raises, the way a bug would."""
    app = create_app(settings)
    router = APIRouter()

    @router.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internal state")

    app.include_router(router)
    with TestClient(app, headers=auth_headers, raise_server_exceptions=False) as client:
        yield client


def test_unexpected_error_is_json_with_request_id(
    crashing_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        r = crashing_client.get("/v1/boom", headers={"X-Request-ID": "req-boom-1"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == "InternalServerError" and "req-boom-1" in body["detail"]
    assert body["request_id"] == "req-boom-1" and r.headers["x-request-id"] == "req-boom-1"
    assert "secret internal state" not in r.text  # internals stay in the log
    logged = [rec for rec in caplog.records if "req-boom-1" in rec.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "secret internal state" in caplog.text
    # The service keeps answering.
    assert crashing_client.get("/healthz").status_code == 200


def test_every_error_kind_is_json(client: TestClient) -> None:
    bare = TestClient(client.app)
    answers = {
        401: bare.get("/v1/allocations"),
        404: client.get("/v1/allocations/00000000-0000-0000-0000-000000000000"),
        405: client.put("/v1/allocations"),
        422: client.post("/v1/allocations", json={"budget": "x"}),
    }
    bad_bytes = client.post(
        "/v1/allocations", content=b"\xff\xfe", headers={"Content-Type": "application/json"}
    )
    assert bad_bytes.status_code in (400, 422) and set(bad_bytes.json()) >= {"error", "detail"}
    for status, r in answers.items():
        assert r.status_code == status, (status, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert set(r.json()) >= {"error", "detail"}, r.text
    unknown = client.get("/no/such/route")
    assert unknown.status_code == 404 and set(unknown.json()) >= {"error", "detail"}
