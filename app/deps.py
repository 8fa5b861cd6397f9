"""FastAPI dependencies and their Annotated aliases, declared once and used by every route."""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import end_write
from app.registry import Registry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed before the response is sent, else rolled back."""
    with request.app.state.sessionmaker() as session:
        try:
            yield session
            deadline = getattr(request.state, "deadline", None)
            if deadline is not None and not deadline.claim_commit():
                raise deadline.error()  # the client already got 504: roll back, keep nothing
            started = perf_counter()
            session.commit()
            timings = getattr(request.state, "timings_ms", None)
            if timings is not None:  # allocation requests report the commit in Server-Timing
                timings["commit"] = (perf_counter() - started) * 1e3
        except Exception:
            session.rollback()
            raise
        finally:
            end_write(session)  # never keep the write gate past the request


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
