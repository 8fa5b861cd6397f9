"""`dfcl models register/list/activate` against the same database a running service uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app as cli
from app.config import Settings
from app.main import create_app


def test_models_commands_drive_a_running_service(
    settings: Settings,
    model_sources: dict[str, Path],
    customers: Any,
    auth_headers: dict[str, str],
) -> None:
    runner = CliRunner()
    env = {"DFCL_DATABASE_URL": settings.database_url, "DFCL_MODELS_DIR": str(settings.models_dir)}

    def dfcl(*args: str) -> Any:
        return runner.invoke(cli, list(args), env=env)

    r = dfcl("models", "list")
    assert r.exit_code == 0 and "no model versions registered" in r.output
    with TestClient(create_app(settings), headers=auth_headers) as client:
        r = dfcl("models", "register", str(model_sources["v1"]), "--activate")
        assert r.exit_code == 0, r.output
        assert "tiny-v1" in r.output and "active" in r.output
        # The service picks the CLI's activation up on its next request.
        body = {"budget": 5.0, "customers": customers(3)}
        assert client.post("/v1/allocations", json=body).json()["model_version"] == "tiny-v1"

        r = dfcl("models", "register", str(model_sources["v2"]))
        assert r.exit_code == 0 and "inactive" in r.output
        r = dfcl("models", "activate", "tiny-v2")
        assert r.exit_code == 0, r.output
        assert client.post("/v1/allocations", json=body).json()["model_version"] == "tiny-v2"

    r = dfcl("models", "list")
    lines = r.output.strip().splitlines()
    assert len(lines) == 2 and any("tiny-v2" in ln and "\tactive" in ln for ln in lines)

    for args, message in [
        (("models", "register", str(model_sources["v1"])), "already registered"),
        (("models", "register", str(model_sources["bad_shape"])), "shape"),
        (("models", "activate", "tiny-v7"), "not registered"),
    ]:
        r = dfcl(*args)
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
