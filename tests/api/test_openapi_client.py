"""Issue 16, OpenAPI: the document is a contract a generated client can use.

A client is generated once per session by `openapi-python-client` (dev extra) from the live
/openapi.json, imported, and used on both databases to call the main endpoints and to read one
error of each kind (401, 404, 409, 413, 422) into its typed `ErrorBody`.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

PACKAGE = "dfcl_generated_client"

# Stable ids: generated clients name their methods after them, so a rename breaks callers.
OPERATION_IDS = {
    "healthz", "readyz",
    "create_allocation", "list_allocations", "get_allocation",
    "record_outcomes", "list_outcomes",
    "list_models", "get_active_model", "register_model", "activate_model",
    "start_retraining", "list_retraining", "get_retraining",
    "budget_what_if",
    "upload_table", "create_allocation_job", "list_allocation_jobs", "get_allocation_job",
    "cancel_allocation_job", "download_allocation_job_decisions",
    "create_campaign", "list_campaigns", "get_campaign", "patch_campaign", "decide_campaign",
}  # fmt: skip


def _live_document(tmp: Path) -> dict[str, Any]:
    app = create_app(Settings(database_url=f"sqlite:///{tmp / 'unused.db'}"))
    document: dict[str, Any] = TestClient(app).get("/openapi.json").json()  # no lifespan needed
    return document


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The client package, generated once per session and imported."""
    import json

    root = tmp_path_factory.mktemp("openapi_client")
    spec = root / "openapi.json"
    spec.write_text(json.dumps(_live_document(root)))
    tool = shutil.which("openapi-python-client") or str(
        Path(sys.executable).with_name("openapi-python-client")
    )
    out = root / PACKAGE
    run = subprocess.run(
        [tool, "generate", "--path", str(spec), "--meta", "none", "--output-path", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert run.returncode == 0 and (out / "client.py").is_file(), run.stdout + run.stderr
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_operation_ids_are_short_stable_and_unique(tmp_path: Path) -> None:
    document = _live_document(tmp_path)
    ids = [op["operationId"] for path in document["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert set(ids) == OPERATION_IDS
    assert all(re.fullmatch(r"[a-z][a-z_]{2,40}", i) for i in ids), ids


def test_every_error_response_declares_the_error_body(tmp_path: Path) -> None:
    document = _live_document(tmp_path)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error_body = document["components"]["schemas"]["ErrorBody"]
    assert {"error", "detail"} <= set(error_body["required"])
    assert {"min_budget", "field", "customer_id", "status"} <= set(error_body["properties"])
    undeclared = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            for code, response in op["responses"].items():
                if code[0] not in "45":
                    continue
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if path == "/readyz" and code == "503":
                    assert schema == {"$ref": "#/components/schemas/Readiness"}
                elif schema != {"$ref": "#/components/schemas/ErrorBody"}:
                    undeclared.append(f"{method.upper()} {path} {code}")
    assert not undeclared, undeclared


def _typed(generated: ModuleType, http: TestClient) -> Any:
    client = generated.AuthenticatedClient(base_url="http://testserver", token="unused")
    return client.set_httpx_client(http)  # the TestClient carries the real key


def test_generated_client_calls_every_main_endpoint_and_reads_errors(
    generated: ModuleType, client: TestClient, customers: Any
) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    ErrorBody = models.ErrorBody
    api = _typed(generated, client)
    people = customers(4)

    create = _api("api.allocations.create_allocation")
    body = models.AllocationCreate.from_dict({"budget": 40.0, "customers": people})
    allocation = create.sync(client=api, body=body)
    assert isinstance(allocation, models.AllocationRead), allocation
    assert len(allocation.decisions) == 4

    got = _api("api.allocations.get_allocation").sync(allocation.id, client=api)
    assert isinstance(got, models.AllocationRead) and got.id == allocation.id
    page = _api("api.allocations.list_allocations").sync(client=api)
    assert isinstance(page, models.AllocationPage) and page.items[0].id == allocation.id

    outcomes = models.OutcomesCreate.from_dict(
        {"outcomes": [{"customer_id": people[0]["id"], "revenue": 3.0, "cost": 1.0}]}
    )
    written = _api("api.outcomes.record_outcomes").sync(allocation.id, client=api, body=outcomes)
    assert isinstance(written, models.OutcomesWritten) and written.n_written == 1
    listed = _api("api.outcomes.list_outcomes").sync(allocation.id, client=api)
    assert isinstance(listed, models.OutcomePage) and listed.n_outcomes == 1

    curve_body = models.BudgetCurveCreate.from_dict({"customers": people, "n_budgets": 3})
    curve = _api("api.budget_what_if.budget_what_if").sync(client=api, body=curve_body)
    assert isinstance(curve, models.BudgetCurveRead) and len(curve.points) == 3

    campaigns = "api.campaigns."
    new = models.CampaignCreate.from_dict(
        {"name": "gen", "budget": 100.0, "expected_customers": 100, "plan_multiplier": 0.5}
    )
    campaign = _api(campaigns + "create_campaign").sync(client=api, body=new)
    assert isinstance(campaign, models.CampaignRead), campaign
    decide = _api(campaigns + "decide_campaign")
    batch = models.CampaignDecide.from_dict({"customers": people[:2]})
    decided = decide.sync(campaign.id, client=api, body=batch)
    assert isinstance(decided, models.CampaignDecisions) and len(decided.decisions) == 2

    # One error of each kind, read into the typed ErrorBody.
    anonymous = _typed(generated, TestClient(client.app))
    e401 = _api("api.allocations.list_allocations").sync(client=anonymous)
    assert isinstance(e401, ErrorBody) and e401.error == "Unauthorized"

    e404 = _api("api.allocations.get_allocation").sync(uuid.uuid4(), client=api)
    assert isinstance(e404, ErrorBody) and e404.error == "NotFound" and e404.detail

    patch = models.CampaignPatch.from_dict({"status": "paused"})
    _api(campaigns + "patch_campaign").sync(campaign.id, client=api, body=patch)
    e409 = decide.sync(campaign.id, client=api, body=batch)
    assert isinstance(e409, ErrorBody) and e409.error == "Conflict" and e409.status == "paused"

    too_many = models.AllocationCreate.from_dict({"budget": 1.0, "customers": customers(2_001)})
    e413 = create.sync(client=api, body=too_many)
    assert isinstance(e413, ErrorBody) and e413.error == "TooManyCustomers"

    infeasible = models.AllocationCreate.from_dict({"budget": 1e-9, "customers": people})
    e422 = create.sync(client=api, body=infeasible)
    assert isinstance(e422, ErrorBody) and e422.error == "InfeasibleBudget"
    assert isinstance(e422.min_budget, float) and e422.min_budget > 1e-9
    missing = [{"id": "x", "features": {"recency": 1}}]
    invalid = models.AllocationCreate.from_dict({"budget": 10.0, "customers": missing})
    e422b = create.sync(client=api, body=invalid)
    assert isinstance(e422b, ErrorBody) and e422b.customer_id == "x"
    bad = create.sync_detailed(client=api, body=models.AllocationCreate.from_dict(
        {"budget": 10.0, "customers": people, "exploration_rate": 2.0}
    ))  # fmt: skip
    assert bad.status_code == 422 and isinstance(bad.parsed, ErrorBody)
    assert bad.parsed.error == "RequestValidationError" and bad.parsed.errors
