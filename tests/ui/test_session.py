"""Dashboard session tokens and CSRF tokens (app/ui/session.py), and the CSV sample parser."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.errors import InvalidInput
from app.services import keys
from app.ui import session as ui_session
from app.ui.views import parse_sample


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Session]:
    engine = make_engine(Settings(database_url=sqlite_url))
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def settings(secret: str = "s3cret", **extra: object) -> Settings:
    return Settings(ui_secret=SecretStr(secret), **extra)  # type: ignore[arg-type]


def test_a_session_round_trips_and_carries_its_own_csrf_token(db: Session) -> None:
    row, _ = keys.create(db, ["read"], name="analyst")
    token = ui_session.issue(settings(), str(row.id), row.key_sha256)
    user = ui_session.verify(db, settings(), token)
    assert user is not None and user.key_id == str(row.id) and user.scopes == ("read",)
    assert user.can("read") and not user.can("admin") and len(user.csrf) == 64
    other = ui_session.issue(settings(), str(row.id), row.key_sha256, now=time.time() + 5)
    again = ui_session.verify(db, settings(), other)
    assert again is not None and again.csrf != user.csrf  # one token per session


def test_forged_expired_revoked_or_foreign_sessions_are_refused(db: Session) -> None:
    row, _ = keys.create(db, ["admin"], name="ops")
    token = ui_session.issue(settings(), str(row.id), row.key_sha256)
    key_id, expires, signature = token.split(".")
    assert ui_session.verify(db, settings(), f"{key_id}.{int(expires) + 3600}.{signature}") is None
    assert ui_session.verify(db, settings(), f"{key_id}.{expires}.{'0' * 64}") is None
    assert ui_session.verify(db, settings("another secret"), token) is None
    assert ui_session.verify(db, settings(), token, now=int(expires) + 1) is None
    assert ui_session.verify(db, settings(), "garbage") is None
    other, _ = keys.create(db, ["read"], name="other")
    assert ui_session.verify(db, settings(), f"{other.id}.{expires}.{signature}") is None
    keys.revoke(db, str(row.id))
    assert ui_session.verify(db, settings(), token) is None


def test_without_a_secret_sessions_still_verify_across_processes(db: Session) -> None:
    row, _ = keys.create(db, ["read"], name="default-secret")
    token = ui_session.issue(settings(""), str(row.id), row.key_sha256)
    assert ui_session.verify(db, settings(""), token) is not None  # derived from the database
    assert ui_session.verify(db, settings("set later"), token) is None


def test_the_anonymous_session_exists_only_with_auth_disabled(db: Session) -> None:
    token = ui_session.issue(settings(), ui_session.ANONYMOUS_ID, ui_session.anonymous_hash())
    assert ui_session.verify(db, settings(), token) is None
    user = ui_session.verify(db, settings(auth_enabled=False), token)
    assert user is not None and user.can("admin")


def test_csrf_comparison_never_accepts_missing_tokens() -> None:
    assert ui_session.same_token("abc", "abc")
    assert not ui_session.same_token("abc", "abd")
    assert not ui_session.same_token("", "")
    assert not ui_session.same_token(None, None)


def test_samples_are_parsed_by_the_models_feature_types() -> None:
    text = "id,recency,history,channel\nc1,3,10.5,Web\nc2,4,0,7\n"
    customers = parse_sample(text, {"recency", "history"}, limit=10)
    assert [c.id for c in customers] == ["c1", "c2"]
    assert customers[1].features == {"recency": 4.0, "history": 0.0, "channel": "7"}
    assert [c.id for c in parse_sample("recency\n1\n2\n", {"recency"}, 10)] == ["row-1", "row-2"]
    for bad, why in (
        ("recency\nsoon\n", "must be a number"),
        ("id,recency\na,1\na,2\n", "repeats"),
        ("recency\n", "no customers"),
        ("recency\n1\n2\n3\n", "more than 2"),
    ):
        with pytest.raises(InvalidInput, match=why):
            parse_sample(bad, {"recency"}, limit=2)
