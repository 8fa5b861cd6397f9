"""GET /metrics, X-Request-ID, JSON logs with the request id, and the limits' error shapes."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.observability import JsonFormatter, RequestIdFilter, logging_config
from app.tables import RetrainJob


def _sample(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus exposition text (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if got == wanted:
                return float(match.group(3))
    return 0.0


def _add_retrain_jobs(client: TestClient, statuses: list[str]) -> None:
    with client.app.state.sessionmaker() as session, session.begin():  # type: ignore[attr-defined]
        for status in statuses:
            session.add(
                RetrainJob(
                    status=status,
                    created_at=datetime.now(UTC),
                    params={},
                    workdir="/nonexistent",
                )
            )


def test_metrics_count_requests_allocations_and_model(client: TestClient, customers: Any) -> None:
    before = client.get("/metrics").text
    body = {"budget": 30.0, "customers": customers(40)}
    out = client.post("/v1/allocations", json=body).json()
    client.get(f"/v1/allocations/{out['id']}")
    client.get("/v1/allocations/not-a-uuid")
    _add_retrain_jobs(client, ["failed", "failed", "succeeded"])  # written by job processes
    after = client.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text

    def delta(name: str, **labels: str) -> float:
        return _sample(text, name, **labels) - _sample(before, name, **labels)

    post = {"method": "POST", "route": "/v1/allocations", "status": "201"}
    assert delta("dfcl_http_requests_total", **post) == 1
    assert delta("dfcl_http_request_duration_seconds_count", **post) == 1
    read = {"method": "GET", "route": "/v1/allocations/{allocation_id}"}
    assert delta("dfcl_http_requests_total", **read, status="200") == 1
    assert delta("dfcl_http_requests_total", **read, status="422") == 1  # template, not the id
    assert delta("dfcl_allocations_total", model_version="tiny-v1") == 1
    assert delta("dfcl_allocated_customers_total") == 40
    assert delta("dfcl_allocated_budget_total") == pytest.approx(30.0)
    assert 0 < delta("dfcl_allocated_expected_cost_total") <= 30.0 + 1e-9
    assert delta("dfcl_solver_seconds_count") == 1 and delta("dfcl_inference_seconds_count") == 1
    assert _sample(text, "dfcl_retrain_jobs", status="failed") == 2
    assert _sample(text, "dfcl_retrain_jobs", status="succeeded") == 1
    assert _sample(text, "dfcl_active_model_info", version="tiny-v1") == 1


def test_replays_and_errors_are_not_counted_as_allocations(
    client: TestClient, customers: Any
) -> None:
    headers = {"Idempotency-Key": "metrics-replay"}
    body = {"budget": 10.0, "customers": customers(5)}
    client.post("/v1/allocations", json=body, headers=headers)
    before = client.get("/metrics").text
    client.post("/v1/allocations", json=body, headers=headers)  # replay
    client.post("/v1/allocations", json={**body, "budget": 0.01})  # 422
    after = client.get("/metrics").text
    name = "dfcl_allocations_total"
    assert _sample(after, name, model_version="tiny-v1") == _sample(
        before, name, model_version="tiny-v1"
    )
    replays = "dfcl_idempotent_replays_total"
    route = "/v1/allocations"
    assert _sample(after, replays, route=route) - _sample(before, replays, route=route) == 1


def test_metrics_can_require_a_key_or_be_off(settings: Settings, db_url: str, new_key: Any) -> None:
    guarded = settings.model_copy(update={"metrics_require_key": True})
    with TestClient(create_app(guarded)) as client:
        assert client.get("/metrics").status_code == 401
        key = new_key(db_url, "read")
        assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with TestClient(create_app(settings.model_copy(update={"metrics_enabled": False}))) as client:
        assert client.get("/metrics").status_code == 404


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Capture the `app` loggers as `dfcl serve` writes them (JSON + request id)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("app")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_request_id_on_response_and_every_log_line(
    client: TestClient, customers: Any, json_log: io.StringIO, model_sources: Any
) -> None:
    r = client.post(
        "/v1/allocations",
        json={"budget": 5.0, "customers": customers(3)},
        headers={"X-Request-ID": "req-abc.123"},
    )
    assert r.headers["x-request-id"] == "req-abc.123"
    # A model activation logs from inside the request (app.registry) as well.
    client.post("/v1/models", json={"path": str(model_sources["v2"])})
    act = client.post("/v1/models/tiny-v2/activate")
    generated = act.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    bad = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert bad.headers["x-request-id"] != "bad id with spaces"

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert lines and all(set(line) >= {"time", "level", "logger", "message"} for line in lines)
    assert all(line["request_id"] for line in lines)  # every line of a request carries its id
    access = [ln for ln in lines if ln["logger"] == "app.access"]
    first = next(ln for ln in access if ln["request_id"] == "req-abc.123")
    assert first["status"] == 201 and first["route"] == "/v1/allocations"
    inner = [ln for ln in lines if ln["request_id"] == generated and ln["logger"] == "app.registry"]
    assert inner and "tiny-v2" in inner[0]["message"]


def test_logging_config_is_valid_for_uvicorn() -> None:
    import logging.config

    config = logging_config("info", "json")
    logging.config.dictConfig(config)  # raises if malformed
    assert config["handlers"]["default"]["filters"] == ["request_id"]
    logging.getLogger("app").handlers.clear()  # leave pytest's logging as it was
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("app").propagate = True


def test_body_limit_is_json_for_declared_and_streamed_bodies(
    settings: Settings, auth_headers: dict[str, str]
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(small), headers=auth_headers) as client:
        declared = client.post(
            "/v1/allocations", content=b"x" * 5000, headers={"content-type": "application/json"}
        )

        def chunks() -> Iterator[bytes]:  # no content-length: counted while streaming
            for _ in range(5):
                yield b" " * 1000

        streamed = client.post(
            "/v1/allocations", content=chunks(), headers={"content-type": "application/json"}
        )
    for r in (declared, streamed):
        assert r.status_code == 413 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "RequestEntityTooLarge"
        assert "4096 bytes" in r.json()["detail"] and "DFCL_MAX_BODY_BYTES" in r.json()["detail"]
