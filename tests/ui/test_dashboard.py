"""The dashboard (/ui) in a real browser: headless Debian Chromium driven by Playwright.

A real uvicorn server (in a thread) serves a SQLite database seeded through the API with two
model versions, allocations, a campaign with decisions and outcomes, an allocation job and a
finished retraining job (inserted as a row with its comparison, rather than trained). The test
logs in, opens every page, checks the numbers shown against the API's, drags the budget control,
checks that a read key cannot activate a model while an admin key can, and saves screenshots at a
laptop and a phone width: to DFCL_UI_ARTIFACTS (default: a pytest temporary directory, printed)
and, when DFCL_UI_SCREENSHOTS is set (e.g. docs/screenshots), there too for the README.

Chromium comes from the system packages (`.ci/run` installs it); it is never downloaded by
Playwright. Without it the test fails rather than skips, so CI cannot silently lose it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.tables import AllocationJob, RetrainJob

CHROMIUM = Path(os.environ.get("DFCL_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PAGES = ("overview", "campaign", "what-if", "models", "retraining")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """The running server, its URL, API keys and what was seeded."""

    def __init__(self, url: str, settings: Settings, keys: dict[str, str]) -> None:
        self.url = url
        self.settings = settings
        self.keys = keys
        self.seed: dict[str, Any] = {}

    def api(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=30
        )


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    model_sources: dict[str, Path],
    customers: Any,
    new_key: Any,
) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("ui-service")
    url = f"sqlite:///{root / 'dfcl.db'}"
    settings = Settings(
        database_url=url, data_dir=root, models_dir=root / "models", ui_secret="ui-test-secret"
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        keys = {
            "admin": new_key(url, "admin"),
            "read": new_key(url, "read"),
            "analyst": new_key(url, "allocate", "read"),
            "allocate_only": new_key(url, "allocate"),
        }
        svc = Service(f"http://127.0.0.1:{port}", settings, keys)
        _seed(svc, model_sources, customers, root)
        yield svc
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _seed(svc: Service, sources: dict[str, Path], customers: Any, root: Path) -> None:
    """Models, allocations, a campaign with decisions and outcomes, two jobs (rows)."""
    with svc.api() as api:
        for name in ("v1", "v2"):
            assert api.post("/v1/models", json={"path": str(sources[name])}).status_code == 201
        assert api.post("/v1/models/tiny-v1/activate").status_code == 200
        allocation_ids = []
        for i in range(3):
            body = {
                "budget": 30.0 + 10 * i,
                "customers": customers(25, seed=10 + i, prefix=f"a{i}-"),
            }
            r = api.post("/v1/allocations", json={**body, "campaign": "newsletter"})
            assert r.status_code == 201, r.text
            allocation_ids.append(r.json()["id"])
        r = api.post(
            "/v1/campaigns",
            json={"name": "spring-sale", "budget": 120.0, "expected_customers": 200,
                  "plan_multiplier": 0.5},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        campaign_id = r.json()["id"]
        people: list[dict[str, Any]] = []
        for batch in range(4):
            group = customers(20, seed=100 + batch, prefix=f"s{batch}-")
            people += group
            r = api.post(f"/v1/campaigns/{campaign_id}/decisions", json={"customers": group})
            assert r.status_code == 201, r.text
            out = r.json()
            if batch < 2:  # outcomes for the first two batches: realized cost 20% above
                outcomes = [
                    {"customer_id": d["customer_id"], "revenue": 2 * d["expected_revenue"],
                     "cost": 1.2 * d["expected_cost"]}
                    for d in out["decisions"]
                ]  # fmt: skip
                r = api.post(
                    f"/v1/allocations/{out['allocation_id']}/outcomes", json={"outcomes": outcomes}
                )
                assert r.status_code in (200, 201), r.text
            time.sleep(1.05)  # one campaign history point per second at most
    engine = make_engine(svc.settings)
    job_dir = root / "retrain" / "job1"
    job_dir.mkdir(parents=True)
    (job_dir / "job.log").write_text(
        "\n".join(f"epoch {i}: decision loss {1.0 / (i + 1):.4f}" for i in range(60))
        + "\ncomparison: activate (forced)\n"
    )
    budgets = [0.2 + 0.2 * i for i in range(10)]
    comparison = {
        "holdout_rows": 400, "margin": 0.0, "force": True, "decision": "activate",
        "reason": "forced", "budgets": budgets, "area_gain": 0.0123,
        "champion": {"version": "tiny-v1", "eom_area": 1.234, "mean_revenue": 1.1,
                     "revenue": [1.0 + 0.5 * b for b in budgets]},
        "challenger": {"version": "tiny-v2", "eom_area": 1.2463, "mean_revenue": 1.15,
                       "revenue": [1.02 + 0.55 * b for b in budgets]},
    }  # fmt: skip
    now = datetime.now(UTC)
    retrain_id, job_id = uuid.uuid4(), uuid.uuid4()
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            session.add(
                RetrainJob(
                    id=retrain_id, status="succeeded", in_progress=False,
                    created_at=now - timedelta(minutes=5), started_at=now - timedelta(minutes=5),
                    finished_at=now - timedelta(minutes=1), params={"method": "bi-dfcl"},
                    workdir=str(job_dir), champion_version="tiny-v1", new_version="tiny-v2",
                    activated=False, metrics={"holdout_challenger_eom_area": 1.2463},
                    comparison=comparison,
                )
            )  # fmt: skip
            session.add(
                AllocationJob(
                    id=job_id, status="succeeded", created_at=now, started_at=now,
                    finished_at=now, params={"budget": 50.0}, workdir=str(root / "jobs" / "j"),
                    phase="done", rows_read=1000, rows_scored=1000, progress=1.0,
                    allocation_id=uuid.UUID(allocation_ids[0]), n_customers=1000,
                    result={}, cancel_requested=False,
                )
            )  # fmt: skip
    finally:
        engine.dispose()
    svc.seed = {
        "campaign_id": campaign_id, "campaign_customers": people, "retrain_id": str(retrain_id),
        "allocation_job_id": str(job_id), "allocation_ids": allocation_ids,
    }  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; "
            ".ci/run does) or point DFCL_CHROMIUM at a Chromium binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield found
        finally:
            found.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("DFCL_UI_ARTIFACTS")
    out = Path(given) if given else tmp_path_factory.mktemp("ui-artifacts")
    out.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {out}")
    return out


def login(browser: Any, svc: Service, role: str, viewport: dict[str, int] = LAPTOP) -> Any:
    """A fresh browser context logged in with the `role` key through the form."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(f"{svc.url}/ui")
    assert "/ui/login" in page.url  # not logged in: sent to the form
    page.get_by_label("API key").fill(svc.keys[role])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{svc.url}/ui")
    return page


def value(page: Any, selector: str) -> float:
    return float(page.locator(selector).get_attribute("data-value"))


def money(v: float) -> str:
    return f"{v:,.2f}"


# ------------------------------------------------------------------------------------ auth


def test_login_sets_a_safe_cookie_and_never_puts_the_key_in_a_url(
    browser: Any, service: Service
) -> None:
    context = browser.new_context()
    urls: list[str] = []
    context.on("request", lambda r: urls.append(r.url))
    page = context.new_page()
    page.goto(f"{service.url}/ui/models")
    assert "/ui/login?next=/ui/models" in page.url
    page.get_by_label("API key").fill("dfcl_not-a-key")
    page.get_by_role("button", name="Log in").click()
    assert "Unknown or revoked" in page.locator("#login-error").inner_text()
    page.get_by_label("API key").fill(service.keys["allocate_only"])  # no read scope
    page.get_by_role("button", name="Log in").click()
    assert "read scope" in page.locator("#login-error").inner_text()
    page.get_by_label("API key").fill(service.keys["read"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{service.url}/ui/models")  # back where the login started
    cookie = next(c for c in context.cookies() if c["name"] == "dfcl_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain http here; Secure whenever the page is https
    assert all(k not in u for u in urls for k in service.keys.values())
    assert all(service.keys["read"] not in c["value"] for c in context.cookies())
    # Keyboard: the skip link is the first stop, then the navigation.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    # Logging out needs the CSRF token too.
    status = page.evaluate("fetch('/ui/logout', {method: 'POST'}).then(r => r.status)")
    assert status == 403
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{service.url}/ui/login")
    page.goto(f"{service.url}/ui")
    assert "/ui/login" in page.url
    context.close()


def test_forged_or_expired_sessions_and_foreign_logins_are_refused(service: Service) -> None:
    with httpx.Client(base_url=service.url) as client:
        r = client.get("/ui", cookies={"dfcl_session": f"{uuid.uuid4()}.9999999999.{'0' * 64}"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        # A login posted from elsewhere lacks the double-submit cookie: refused.
        r = client.post("/ui/login", data={"api_key": service.keys["read"], "csrf_token": "x"})
        assert r.status_code == 403 and "dfcl_session" not in r.headers.get("set-cookie", "")
        # The next parameter never leads off the dashboard.
        r = client.get("/ui/login", params={"next": "//evil.example/ui"})
        assert 'value="/ui"' in r.text
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


# ----------------------------------------------------------------------------------- pages


def test_pages_show_the_apis_numbers(browser: Any, service: Service) -> None:
    page = login(browser, service, "read")
    with service.api("read") as api:
        active = api.get("/v1/models/active").json()
        listed = api.get("/v1/allocations", params={"limit": 10}).json()["items"]
        campaign = api.get(f"/v1/campaigns/{service.seed['campaign_id']}").json()
        versions = api.get("/v1/models").json()
        job = api.get(f"/v1/retrain/{service.seed['retrain_id']}").json()
        alloc_job = api.get(f"/v1/allocation-jobs/{service.seed['allocation_job_id']}").json()

    # Overview
    assert page.locator("#active-model").get_attribute("data-value") == active["version"]
    shown = page.locator("#allocations tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.allocation)"
    )
    assert shown == [a["id"] for a in listed]
    first = page.locator(f'tr[data-allocation="{listed[0]["id"]}"]')
    for field in ("expected_revenue", "expected_cost", "budget_total"):
        assert value(first, f'[data-field="{field}"]') == pytest.approx(listed[0][field], rel=1e-12)
        assert first.locator(f'[data-field="{field}"]').inner_text() == money(listed[0][field])
    row = page.locator(f'tr[data-campaign="{campaign["id"]}"]')
    for field in ("budget", "committed_spend", "realized_spend", "remaining_budget"):
        assert value(row, f'[data-field="{field}"]') == pytest.approx(campaign[field], rel=1e-12)
        assert row.locator(f'[data-field="{field}"]').inner_text() == money(campaign[field])
    assert (
        campaign["realized_spend"] > 0 and campaign["committed_spend"] > campaign["realized_spend"]
    )
    job_row = page.locator(f'tr[data-job="{alloc_job["id"]}"]')
    assert job_row.locator('[data-field="status"]').inner_text() == alloc_job["status"]

    # Campaign
    row.get_by_role("link", name="spring-sale").click()
    page.wait_for_url(f"**/ui/campaigns/{campaign['id']}")
    stats = page.locator("#campaign-stats")
    for field in ("budget", "committed_spend", "realized_spend", "predicted_spend",
                  "remaining_budget", "multiplier", "n_decisions", "n_outcomes"):  # fmt: skip
        assert value(stats, f'[data-field="{field}"]') == pytest.approx(campaign[field], rel=1e-12)
    for arm in campaign["arms"]:
        tr = page.locator(f'#arms tr[data-arm="{arm["treatment"]}"]')
        assert tr.locator("th").inner_text() == arm["treatment_name"]
        for field in ("n_decisions", "n_outcomes", "predicted_cost", "realized_cost",
                      "predicted_cost_with_outcomes", "calibration"):  # fmt: skip
            assert value(tr, f'[data-field="{field}"]') == pytest.approx(arm[field], rel=1e-12)
    assert page.locator("#spend-chart polyline").count() == 4  # committed, realized, plan, budget
    assert page.locator("#multiplier-chart circle.dot").count() == len(campaign["history"])
    assert page.locator("#arm-chart rect.bar").count() == 2 * len(campaign["arms"])

    # Models
    page.get_by_role("link", name="Models").click()
    shown = page.locator("#versions tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.version)"
    )
    assert shown == [v["version"] for v in versions]
    for v in versions:
        flag = page.locator(f'tr[data-version="{v["version"]}"] [data-field="is_active"]')
        assert flag.get_attribute("data-value") == str(v["is_active"]).lower()
    art = page.locator(f'article[data-job="{job["id"]}"]')
    cmp = job["comparison"]
    assert value(art, '[data-field="champion_eom_area"]') == cmp["champion"]["eom_area"]
    assert value(art, '[data-field="challenger_eom_area"]') == cmp["challenger"]["eom_area"]
    assert art.locator("svg.chart polyline").count() == 2
    assert art.locator("svg.chart circle.dot").count() == 2 * len(cmp["budgets"])

    # Retraining jobs
    page.get_by_role("link", name="Retraining jobs").click()
    section = page.locator(f'section[data-job="{job["id"]}"]')
    assert section.locator('[data-field="status"]').get_attribute("data-value") == job["status"]
    assert job["log_tail"] == [] and section.locator("pre.log").count() == 0  # admin only
    assert section.locator('[data-field="log-hidden"]').is_visible()
    page.context.close()

    page = login(browser, service, "admin")  # an admin sees the log, as in the API
    page.goto(f"{service.url}/ui/retraining")
    with service.api("admin") as api:
        job = api.get(f"/v1/retrain/{service.seed['retrain_id']}").json()
    log = page.locator(f'section[data-job="{job["id"]}"] pre.log').inner_text()
    assert log.splitlines() == job["log_tail"] and len(job["log_tail"]) == 40
    page.context.close()


def test_budget_what_if_matches_the_api_and_follows_the_range_input(
    browser: Any, service: Service
) -> None:
    page = login(browser, service, "analyst")
    page.get_by_role("link", name="Budget what-if").click()
    page.get_by_label("Campaign", exact=True).select_option(label="spring-sale")
    page.get_by_role("button", name="Show curve").first.click()
    page.wait_for_selector("#curve-chart")
    data = json.loads(page.locator("#curve-data").inner_text())
    with service.api("analyst") as api:
        api_curve = api.post(
            "/v1/budget-curve",
            json={"customers": service.seed["campaign_customers"], "budgets": data["budgets"],
                  "per_capita": True},
        ).json()  # fmt: skip
        campaign = api.get(f"/v1/campaigns/{service.seed['campaign_id']}").json()
    assert data["n_customers"] == api_curve["n_customers"] == 80
    for i, point in enumerate(api_curve["points"]):
        assert data["revenue"][i] == pytest.approx(point["expected_revenue"], rel=1e-9)
        assert data["cost"][i] == pytest.approx(point["expected_cost"], rel=1e-9)
    assert data["current"] == pytest.approx(campaign["budget"] / campaign["expected_customers"])
    assert page.locator("#curve-chart line.marker").count() == 1  # the current budget

    slider = page.locator("#budget-range")
    start = int(slider.input_value())
    assert value(page, "#r-revenue") == pytest.approx(data["revenue"][start])
    cursor_before = page.locator("#curve-chart line.cursor").get_attribute("x1")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 4, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    moved = int(slider.input_value())
    assert moved > start + 5
    assert page.locator("#curve-chart line.cursor").get_attribute("x1") != cursor_before
    assert value(page, "#r-revenue") == pytest.approx(data["revenue"][moved])
    assert value(page, "#r-cost") == pytest.approx(data["cost"][moved])
    assert value(page, "#r-budget") == pytest.approx(data["budgets"][moved])
    assert value(page, "#r-marginal") == pytest.approx(data["marginal"][moved])
    # Keyboard: Home, then one step right.
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    assert slider.input_value() == "1"
    assert value(page, "#r-revenue") == pytest.approx(data["revenue"][1])

    # An uploaded sample: the file is read into the form by the page's script.
    sample = service.seed["campaign_customers"][:30]
    csv = "id,recency,history,channel\n" + "".join(
        f"{c['id']},{c['features']['recency']},{c['features']['history']},"
        f"{c['features']['channel']}\n"
        for c in sample
    )
    page.locator("#sample-file").set_input_files(
        files=[{"name": "sample.csv", "mimeType": "text/csv", "buffer": csv.encode()}]
    )
    page.wait_for_function("document.getElementById('sample').value.length > 0")
    page.get_by_label("Current budget per customer").fill("0.9")
    page.locator("#sample-form").get_by_role("button", name="Show curve").click()
    page.wait_for_selector("#curve-chart")
    data = json.loads(page.locator("#curve-data").inner_text())
    with service.api("analyst") as api:
        api_curve = api.post(
            "/v1/budget-curve",
            json={"customers": sample, "budgets": data["budgets"], "per_capita": True},
        ).json()
    assert data["n_customers"] == 30 and data["current"] == 0.9
    for i, point in enumerate(api_curve["points"]):
        assert data["revenue"][i] == pytest.approx(point["expected_revenue"], rel=1e-9)
    page.context.close()


def test_read_key_cannot_activate_and_admin_can(browser: Any, service: Service) -> None:
    page = login(browser, service, "read")
    page.goto(f"{service.url}/ui/models")
    assert page.get_by_role("button", name="Activate tiny-v2").count() == 0
    assert page.locator("#admin-note").is_visible()
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    status = page.evaluate(
        """token => fetch('/ui/models/tiny-v2/activate', {method: 'POST',
            headers: {'X-CSRF-Token': token}}).then(r => r.status)""",
        token,
    )
    assert status == 403  # a valid session and token, but no admin scope
    # A read key runs no model either (the API's budget curve needs allocate).
    page.goto(f"{service.url}/ui/what-if?campaign={service.seed['campaign_id']}")
    assert "allocate scope" in page.locator("#whatif-error").inner_text()
    page.context.close()
    with service.api() as api:
        assert api.get("/v1/models/active").json()["version"] == "tiny-v1"

    page = login(browser, service, "admin")
    page.goto(f"{service.url}/ui/models")
    status = page.evaluate(  # the admin's own session, but no CSRF token: refused
        "fetch('/ui/models/tiny-v2/activate', {method: 'POST'}).then(r => r.status)"
    )
    assert status == 403
    page.get_by_role("button", name="Activate tiny-v2").click()
    assert "Activated tiny-v2" in page.locator("#flash").inner_text()
    with service.api() as api:
        assert api.get("/v1/models/active").json()["version"] == "tiny-v2"
        assert api.post("/v1/models/tiny-v1/activate").status_code == 200  # as it was
    page.context.close()


# ------------------------------------------------------------------------------ screenshots


def test_screenshots_at_laptop_and_phone_width(
    browser: Any, service: Service, artifacts: Path
) -> None:
    targets = {
        "overview": "/ui",
        "campaign": f"/ui/campaigns/{service.seed['campaign_id']}",
        "what-if": f"/ui/what-if?campaign={service.seed['campaign_id']}",
        "models": "/ui/models",
        "retraining": "/ui/retraining",
    }
    assert set(targets) == set(PAGES)
    copy_to = os.environ.get("DFCL_UI_SCREENSHOTS")
    out = (ROOT / copy_to) if copy_to and not Path(copy_to).is_absolute() else None
    if copy_to and out is None:
        out = Path(copy_to)
    saved = []
    for width_name, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        page = login(browser, service, "admin", viewport)
        for name, path in targets.items():
            page.goto(f"{service.url}{path}")
            if name == "what-if":
                page.wait_for_selector("#curve-chart line.cursor", state="attached")
            # Nothing may overflow the viewport sideways (tables scroll inside their card).
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 1, f"{name} overflows the {width_name} width by {overflow}px"
            file = artifacts / f"{name}-{width_name}.png"
            page.screenshot(path=str(file), full_page=True)
            saved.append(file)
        page.context.close()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for file in saved:
            shutil.copy2(file, out / file.name)
    assert all(f.stat().st_size > 5_000 for f in saved)
