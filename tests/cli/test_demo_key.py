"""`dfcl demo` replaces its previous key; it says which weights serve; `dfcl serve` start-up
failures are one `error:` line."""

from __future__ import annotations

import uuid
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from app.cli import app as cli
from app.config import Settings
from app.core.model_card import ModelCard
from app.db import make_engine, make_sessionmaker, prepare_schema
from app.jobs import demo
from app.services import keys
from tests.conftest import PG_ADMIN_URL


def _active_demo_keys(settings: Settings) -> list[str]:
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            return [
                r.prefix
                for r in keys.list_keys(session)
                if r.revoked_at is None and r.name in (demo.DEMO_KEY_NAME, "demo")
            ]
    finally:
        engine.dispose()


def test_demo_revokes_its_previous_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models")
    engine = make_engine(settings)
    prepare_schema(engine, settings)
    with make_sessionmaker(engine)() as session, session.begin():
        keys.create(session, ["allocate", "read"], name="demo")  # an older demo's key
        keys.create(session, ["admin"], name="demo")  # someone's own key: left alone
        keys.create(session, ["read"], name="ops")
    engine.dispose()

    first, revoked = demo.create_key(settings)
    assert revoked == 1  # the older demo key (allocate + read)
    second, revoked = demo.create_key(settings)
    assert revoked == 1 and second != first
    active = _active_demo_keys(settings)
    assert len(active) == 2  # this run's key and the admin key merely named "demo"
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session:
        assert keys.find_active(session, first) is None
        assert keys.find_active(session, second) is not None
        names = sorted(r.name for r in keys.list_keys(session) if r.revoked_at is None)
    engine.dispose()
    assert names == ["demo", "dfcl-demo", "ops"]


def _card(method: str, selected: str, default: str) -> ModelCard:
    return ModelCard(
        version="v",
        method=method,
        treatments=("a", "b"),
        n_features=1,
        feature_spec={},
        outputs={},
        validation={"selected_phase": selected, "default_phase": default, "selection_score": 0.1},
    )


def test_demo_says_which_weights_serve_and_why() -> None:
    warm = demo.serving_explanation(_card("bi-dfcl", "warm-start-average", "warm-start-average"))
    assert "two-stage warm start" in warm and "did not" not in warm and "no bi-dfcl" in warm
    won = demo.serving_explanation(_card("bi-dfcl", "bi-dfcl-average", "warm-start-average"))
    assert "decision-focused" in won and "beat" in won
    assert "two-stage" in demo.serving_explanation(_card("tsm-rct", "tsm-rct", "tsm-rct"))


def test_demo_defaults_are_quick_and_full_is_documented() -> None:
    assert demo.DEMO_SIZES < demo.FULL_SIZES
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "dfcl demo --full" in readme


def _serve(env: dict[str, str]) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["serve"], env=env)
    return r.exit_code, r.output


def test_serve_start_up_failures_are_one_line(tmp_path: Path) -> None:
    # A PostgreSQL database that does not exist.
    missing = sa.make_url(PG_ADMIN_URL).set(database=f"dfcl_missing_{uuid.uuid4().hex[:8]}")
    code, out = _serve({"DFCL_DATABASE_URL": missing.render_as_string(hide_password=False)})
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    assert "does not exist" in lines[0] and "Traceback" not in out

    # A schema behind the code with auto-migration off.
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    code, out = _serve({"DFCL_DATABASE_URL": url, "DFCL_AUTO_MIGRATE": "false"})
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    assert "alembic upgrade head" in lines[0]
