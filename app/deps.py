"""FastAPI dependencies and their Annotated aliases, declared once and used by every route."""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import end_write
from app.middleware import RequestState, request_state
from app.registry import Registry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def get_request_state(request: Request) -> RequestState:
    return request_state(request.scope)


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed before the response is sent, else rolled back."""
    state = request_state(request.scope)
    with request.app.state.sessionmaker() as session:
        try:
            yield session
            if state.deadline is not None and not state.deadline.claim_commit():
                raise state.deadline.error()  # the client already got 504: roll back, keep nothing
            started = perf_counter()
            session.commit()
            if state.timings_ms:  # requests that timed their stages report the commit too
                state.timings_ms["commit"] = (perf_counter() - started) * 1e3
        except Exception:
            session.rollback()
            raise
        finally:
            end_write(session)  # never keep the write gate past the request


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
RequestStateDep = Annotated[RequestState, Depends(get_request_state)]
