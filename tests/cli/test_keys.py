"""`dfcl keys create|list|revoke`: the secret is shown once, stored hashed, revocable by prefix."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app as cli
from app.config import Settings


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_cli_create_list_revoke(client: TestClient, settings: Settings) -> None:
    runner = CliRunner()
    env = {"DFCL_DATABASE_URL": settings.database_url, "DFCL_MODELS_DIR": str(settings.models_dir)}

    r = runner.invoke(cli, ["keys", "create", "--scope", "read", "--name", "dashboard"], env=env)
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip().splitlines()[0]
    assert secret.startswith("dfcl_") and len(secret) > 40
    assert client.get("/v1/models", headers=_bearer(secret)).status_code == 200

    # Only the hash is in the database.
    engine = sa.create_engine(client.app.state.engine.url)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT key_sha256, prefix FROM api_keys")).all()
    engine.dispose()
    assert (hashlib.sha256(secret.encode()).hexdigest(), secret[:12]) in stored
    assert all(secret not in "".join(row) for row in stored)

    listed = runner.invoke(cli, ["keys", "list"], env=env)
    line = next(ln for ln in listed.stdout.splitlines() if "dashboard" in ln)
    assert secret not in listed.stdout and "read" in line and "active" in line

    r = runner.invoke(cli, ["keys", "revoke", line.split("\t")[1]], env=env)  # by prefix
    assert r.exit_code == 0, r.output
    r = client.get("/v1/models", headers=_bearer(secret))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert "revoked" in runner.invoke(cli, ["keys", "list"], env=env).stdout

    for args, message in [
        (["keys", "create", "--scope", "root"], "unknown scope"),
        (["keys", "revoke", "dfcl_nothing"], "no key"),
    ]:
        r = runner.invoke(cli, args, env=env)
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
