"""`dfcl outcomes import FILE --allocation ID`: the API's checks, nothing written on refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app as cli
from app.config import Settings
from tests.utils.api import explored_allocation


def test_import_checks_like_the_api(
    client: TestClient, customers: Any, settings: Settings, tmp_path: Path
) -> None:
    alloc = explored_allocation(client, customers, 10)
    frame = pd.DataFrame({"customer_id": ["c0", "c1"], "revenue": [3.0, 0.0], "cost": [0.1, 0.2]})
    good = tmp_path / "good.csv"
    frame.to_csv(good, index=False)
    env = {"DFCL_DATABASE_URL": settings.database_url, "DFCL_MODELS_DIR": str(tmp_path)}
    runner = CliRunner()
    ok = runner.invoke(cli, ["outcomes", "import", str(good), "--allocation", alloc["id"]], env=env)
    assert ok.exit_code == 0 and "2 outcomes written" in ok.output, ok.output
    bad = tmp_path / "bad.csv"
    frame.assign(customer_id=["c0", "stranger"]).to_csv(bad, index=False)
    refused = runner.invoke(
        cli, ["outcomes", "import", str(bad), "--allocation", alloc["id"]], env=env
    )
    assert refused.exit_code == 2 and "'stranger'" in refused.output
    assert client.get(f"/v1/allocations/{alloc['id']}/outcomes").json()["n_outcomes"] == 2
