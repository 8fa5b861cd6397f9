"""Dashboard pages without a browser, on SQLite and PostgreSQL: empty states, errors as pages,
the campaign what-if query on both backends, and the auth-disabled login."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def ui_login(client: TestClient, key: str) -> None:
    """Log in through the form, as a browser would (double-submit cookie + hidden field)."""
    page = client.get("/ui/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    r = client.post(
        "/ui/login",
        data={"csrf_token": token.group(1), "api_key": key, "next": "/ui"},
        headers={"Authorization": ""},  # the form, not the API header, must log in
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text


def test_empty_pages_render_and_errors_are_pages(
    bare_client: TestClient, new_key: Any, settings: Settings
) -> None:
    ui_login(bare_client, new_key(settings.database_url, "read"))
    for path, text in (
        ("/ui", "No model is active"),
        ("/ui/models", "No retraining jobs yet"),
        ("/ui/retraining", "No retraining jobs yet"),
        ("/ui/what-if", "Budget what-if"),
    ):
        r = bare_client.get(path)
        assert r.status_code == 200 and text in r.text, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
    r = bare_client.get(f"/ui/campaigns/{uuid.uuid4()}")
    assert r.status_code == 404 and "does not exist" in r.text and "<html" in r.text
    assert bare_client.get("/ui/static/whatif.js").status_code == 200


def test_campaign_what_if_reads_stored_features(
    client: TestClient, customers: Any, new_key: Any, settings: Settings
) -> None:
    r = client.post(
        "/v1/campaigns",
        json={"name": "c", "budget": 50.0, "expected_customers": 100, "plan_multiplier": 0.5},
    )
    campaign_id = r.json()["id"]
    ui_login(client, new_key(settings.database_url, "allocate", "read"))
    empty = client.get(f"/ui/what-if?campaign={campaign_id}")
    assert "has no decided customers yet" in empty.text
    people = customers(15, seed=3)
    r = client.post(f"/v1/campaigns/{campaign_id}/decisions", json={"customers": people})
    assert r.status_code == 201, r.text
    page = client.get(f"/ui/what-if?campaign={campaign_id}")
    assert page.status_code == 200 and 'id="curve-data"' in page.text
    assert "(15 customers, model tiny-v1)" in page.text


def test_with_auth_disabled_the_login_needs_no_key(tmp_path: Path, sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url, models_dir=tmp_path, auth_enabled=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/ui", follow_redirects=False).status_code == 303
        ui_login(client, "")
        assert client.get("/ui").status_code == 200
