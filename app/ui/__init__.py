"""The dashboard (/ui): server-rendered pages for campaign owners; see app/ui/routes.py.

`install(app)` is the one call app/main.py makes, so the dashboard's router, static files and
its two exception handlers (login redirect, CSRF refusal) are wired in one place.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.ui.routes import HERE, CsrfFailed, LoginRequired, csrf_refused, login_redirect, router


def install(app: FastAPI) -> None:
    """Add /ui pages, /ui/static files (CSS and one small script) and the handlers."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_exception_handler(LoginRequired, login_redirect)
    app.add_exception_handler(CsrfFailed, csrf_refused)
