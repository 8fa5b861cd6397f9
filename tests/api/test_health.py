"""Probes, startup (migrations applied or refused, no model, broken active model), no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import SchemaNotReady, find_migrations
from app.main import create_app


def _head() -> str:
    """The newest revision in migrations/ (other revisions are added over time)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(find_migrations(Settings())))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_health_and_readiness(bare_client: TestClient, model_sources: dict[str, Path]) -> None:
    assert bare_client.get("/healthz").json() == {"status": "ok"}
    r = bare_client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "ready": False,
        "database": True,
        "model_version": None,
        "detail": "no model version is active",
    }
    bare_client.post("/v1/models", json={"path": str(model_sources["v1"])})
    bare_client.post("/v1/models/tiny-v1/activate")
    r = bare_client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and r.json()["model_version"] == "tiny-v1"


def test_fresh_database_is_migrated_at_startup(tmp_path: Path, new_key: Any) -> None:
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'dfcl.db'}"
    with TestClient(create_app(settings)) as client:
        key = new_key(settings.database_url, "read")  # the keys table exists once migrated
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json() == []
        assert client.get("/readyz").json()["database"] is True
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert version == _head() and {"allocations", "decisions", "model_versions"} <= tables


def test_refuses_unmigrated_database_without_auto_migrate(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", auto_migrate=False)
    with pytest.raises(SchemaNotReady, match="alembic upgrade head"):
        with TestClient(create_app(settings)):
            pass


def test_missing_migrations_named(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, migrations_dir=tmp_path / "nothing-here")
    with pytest.raises(SchemaNotReady, match="DFCL_MIGRATIONS_DIR"):
        find_migrations(settings)


def test_migrations_found_from_other_directory(tmp_path: Path, monkeypatch: Any) -> None:
    """The service finds its migrations wherever it is started from (source/editable install)."""
    monkeypatch.chdir(tmp_path)
    assert (find_migrations(Settings()) / "env.py").is_file()


def test_broken_active_model_leaves_service_live(
    settings: Settings,
    model_sources: dict[str, Path],
    customers: Any,
    auth_headers: dict[str, str],
) -> None:
    with TestClient(create_app(settings), headers=auth_headers) as client:
        client.post("/v1/models", json={"path": str(model_sources["v1"])})
        client.post("/v1/models/tiny-v1/activate")
    (settings.models_dir / "tiny-v1" / "model.onnx").write_bytes(b"corrupted")
    with TestClient(create_app(settings), headers=auth_headers) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "tiny-v1" in ready.json()["detail"]
        r = client.post("/v1/allocations", json={"budget": 5.0, "customers": customers(2)})
        assert r.status_code == 503 and "does not load" in r.json()["detail"]


def test_service_never_imports_torch() -> None:
    """The service imports neither torch nor training; the CLI and the jobs package load no
    torch until a command needs it (the CLI reads training.config, stdlib only, for options)."""
    code = (
        "import sys\n"
        "import app.main, app.inference, app.registry, app.jobs.runner\n"
        "from app.config import Settings\n"
        "app.main.create_app(Settings())\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training'))\n"
        "assert not bad, bad\n"
        "import app.cli, app.jobs.demo, app.jobs.loop_demo, app.jobs.retrain\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'\n"
        "             or (m.startswith('training') and m != 'training.config'\n"
        "                 and m != 'training'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_concurrent_startups_migrate_once(db_kind_fresh_url: str) -> None:
    """Worker processes starting together on a fresh database all come up (one migrates)."""
    code = (
        "import sys\n"
        "from app.config import Settings\n"
        "from app.db import make_engine, prepare_schema\n"
        "settings = Settings(database_url=sys.argv[1])\n"
        "engine = make_engine(settings)\n"
        "prepare_schema(engine, settings)\n"
        "engine.dispose()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_kind_fresh_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    url = db_kind_fresh_url.replace("postgresql://", "postgresql+psycopg://")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
        assert versions.all() == [_head()]
    engine.dispose()
