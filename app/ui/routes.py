"""/ui: the campaign owners' dashboard, server-rendered (Jinja2) with SVG charts.

Routes only check the session and CSRF token, parse forms and render; the numbers come from
app/ui/views.py, which calls the same services as the API. Every page answers with a strict
Content-Security-Policy (scripts and styles only from /ui/static, no inline script), no caching
and no framing. See app/ui/session.py for how logins, sessions and CSRF tokens work.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app.deps import RegistryDep, SessionDep, SettingsDep
from app.errors import DomainError
from app.services import campaigns, keys, models
from app.ui import session as ui_session
from app.ui import views
from app.ui.session import UiUser

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["money"] = lambda v: "–" if v is None else f"{float(v):,.2f}"
templates.env.filters["num"] = lambda v, d=4: "–" if v is None else f"{float(v):.{d}g}"
templates.env.filters["when"] = lambda v: "–" if v is None else v.strftime("%Y-%m-%d %H:%M:%S")
templates.env.filters["pct"] = lambda v: f"{100 * float(v):.0f}%"

router = APIRouter(prefix="/ui", include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No valid session: the handler (app.ui.install) redirects to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfFailed(Exception):
    """A POST without the session's CSRF token: answered 403, nothing done."""


def login_redirect(request: Request, exc: Exception) -> Response:
    """Send the browser to the login form, remembering the page (a path, never a key)."""
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/ui/login?next={quote(exc.next_path)}", status_code=303)


def csrf_refused(request: Request, exc: Exception) -> Response:
    return HTMLResponse(
        "<!doctype html><title>Forbidden</title><p>The form expired or did not come from this "
        'dashboard (CSRF check failed). <a href="/ui">Back to the dashboard</a>.</p>',
        status_code=403, headers=SECURITY_HEADERS,
    )  # fmt: skip


def current_user(request: Request, session: SessionDep, settings: SettingsDep) -> UiUser:
    """The logged-in user (any page needs the `read` scope), else a redirect to log in."""
    token = request.cookies.get(ui_session.SESSION_COOKIE)
    user = ui_session.verify(session, settings, token) if token else None
    if user is None or not user.can("read"):
        # Come back to the page after logging in; a form post cannot be replayed, so after one
        # the overview is shown.
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginRequired(request.url.path + query if request.method == "GET" else "/ui")
    return user


User = Annotated[UiUser, Depends(current_user)]


async def form_of(request: Request) -> dict[str, str]:
    """A urlencoded form body (the dashboard posts no files: no multipart parser needed)."""
    body = (await request.body()).decode(errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def check_csrf(request: Request, user: UiUser, form: dict[str, str]) -> None:
    """The session's token must come back in the form field or the X-CSRF-Token header."""
    given = form.get(ui_session.CSRF_FIELD) or request.headers.get(ui_session.CSRF_HEADER)
    if not ui_session.same_token(user.csrf, given):
        raise CsrfFailed()


def render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _safe_next(value: str | None) -> str:
    """Only a dashboard path may follow a login (no open redirect)."""
    if value and value.startswith("/ui") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui"


# ------------------------------------------------------------------------------- login


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, settings: SettingsDep, next: str = "/ui") -> Response:
    """The login form; sets the double-submit cookie its CSRF field must match."""
    token = ui_session.new_login_csrf()
    response = render(
        request, "login.html",
        {"csrf": token, "next": _safe_next(next), "error": None, "auth": settings.auth_enabled},
    )  # fmt: skip
    _set_cookie(request, response, ui_session.LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Check the key (posted in the body, never in a URL) and start a session."""
    form = await form_of(request)
    if not ui_session.same_token(
        request.cookies.get(ui_session.LOGIN_CSRF_COOKIE), form.get(ui_session.CSRF_FIELD)
    ):
        raise CsrfFailed()
    next_path = _safe_next(form.get("next"))
    if not settings.auth_enabled:
        token = ui_session.issue(settings, ui_session.ANONYMOUS_ID, ui_session.anonymous_hash())
    else:
        row = keys.find_active(session, form.get("api_key", "").strip())
        error = None
        if row is None:
            error = "Unknown or revoked API key."
        elif "read" not in row.scopes and "admin" not in row.scopes:
            error = "This key lacks the read scope the dashboard needs."
        if row is None or error is not None:
            csrf = ui_session.new_login_csrf()
            response = render(
                request, "login.html",
                {"csrf": csrf, "next": next_path, "error": error, "auth": True},
                status_code=401 if row is None else 403,
            )  # fmt: skip
            _set_cookie(request, response, ui_session.LOGIN_CSRF_COOKIE, csrf, max_age=3600)
            return response
        token = ui_session.issue(settings, str(row.id), row.key_sha256)
    redirect = RedirectResponse(next_path, status_code=303)
    redirect.headers.update(SECURITY_HEADERS)
    _set_cookie(
        request, redirect, ui_session.SESSION_COOKIE, token,
        max_age=int(settings.ui_session_hours * 3600),
    )  # fmt: skip
    redirect.delete_cookie(ui_session.LOGIN_CSRF_COOKIE, path="/ui")
    return redirect


@router.post("/logout")
async def logout(request: Request, user: User) -> Response:
    check_csrf(request, user, await form_of(request))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(ui_session.SESSION_COOKIE, path="/ui")
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Strict, limited to /ui, Secure whenever the page came over https."""
    response.set_cookie(
        name, value, max_age=max_age, path="/ui", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


# ------------------------------------------------------------------------------- pages


@router.get("", response_class=HTMLResponse)
def overview(request: Request, user: User, session: SessionDep) -> Response:
    return render(
        request, "overview.html", {"user": user, "page": "overview", **views.overview(session)}
    )


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def campaign(request: Request, campaign_id: uuid.UUID, user: User, session: SessionDep) -> Response:
    try:
        data = views.campaign_page(session, campaign_id)
    except DomainError as exc:
        return _problem(request, user, exc)
    return render(request, "campaign.html", {"user": user, "page": "overview", **data})


def _whatif_context(session: Session, user: UiUser) -> dict[str, Any]:
    rows, _ = campaigns.list_page(session, limit=views.CAMPAIGNS_SHOWN, offset=0)
    return {"user": user, "page": "whatif", "campaigns": rows, "curve": None, "error": None,
            "sample": "", "budget": "", "selected": None}  # fmt: skip


@router.get("/what-if", response_class=HTMLResponse)
def what_if(
    request: Request,
    user: User,
    session: SessionDep,
    registry: RegistryDep,
    settings: SettingsDep,
    campaign: uuid.UUID | None = None,
) -> Response:
    """The what-if page; with ?campaign=<id>, the curve of that campaign's recent customers."""
    context = _whatif_context(session, user)
    if campaign is not None:
        context["selected"] = campaign
        if not user.can("allocate"):  # it runs the model, like POST /v1/budget-curve
            context["error"] = "A what-if runs the model: it needs a key with the allocate scope."
        else:
            try:
                context["curve"] = views.campaign_what_if(
                    session, registry, campaign, max_customers=settings.max_customers
                )
            except DomainError as exc:
                context["error"] = str(exc)
    return _render_whatif(request, context)


@router.post("/what-if", response_class=HTMLResponse)
async def what_if_sample(
    request: Request, user: User, session: SessionDep, registry: RegistryDep, settings: SettingsDep
) -> Response:
    """The curve of an uploaded (pasted or file-picked) CSV sample of customers."""
    form = await form_of(request)
    check_csrf(request, user, form)
    context = _whatif_context(session, user)
    context["sample"], context["budget"] = form.get("sample", ""), form.get("budget", "")
    if not user.can("allocate"):
        context["error"] = "A what-if runs the model: it needs a key with the allocate scope."
        return _render_whatif(request, context, 403)
    try:
        current = float(context["budget"]) if context["budget"].strip() else None
    except ValueError:
        context["error"] = "The budget per customer must be a number."
        return _render_whatif(request, context, 422)
    try:
        customers = views.parse_sample(
            context["sample"], views.numeric_features(session, registry), settings.max_customers
        )
        context["curve"] = views.what_if(
            session, registry, customers, source="uploaded sample", model_version=None,
            current=current, max_customers=settings.max_customers,
        )  # fmt: skip
    except DomainError as exc:
        context["error"] = str(exc)
        return _render_whatif(request, context, exc.status_code)
    return _render_whatif(request, context)


def _render_whatif(request: Request, context: dict[str, Any], status: int = 200) -> Response:
    curve = context["curve"]
    # Numbers only, but never let "</script>" end the embedding early.
    context["curve_json"] = (
        json.dumps(curve.data()).replace("<", "\\u003c") if curve is not None else None
    )
    return render(request, "whatif.html", context, status_code=status)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, user: User, session: SessionDep) -> Response:
    return render(
        request, "models.html",
        {"user": user, "page": "models", "flash": request.query_params.get("activated"),
         **views.models_page(session)},
    )  # fmt: skip


@router.post("/models/{version}/activate", response_class=HTMLResponse)
async def activate(
    request: Request, version: str, user: User, session: SessionDep, registry: RegistryDep
) -> Response:
    """Admin only, as POST /v1/models/{version}/activate; then back to the models page."""
    check_csrf(request, user, await form_of(request))
    if not user.can("admin"):
        return _problem(
            request, user, None, "Activating a model needs a key with the admin scope.", 403
        )
    try:
        models.activate(session, registry, version)
    except DomainError as exc:
        return _problem(request, user, exc)
    return RedirectResponse(f"/ui/models?activated={quote(version)}", status_code=303)


@router.get("/retraining", response_class=HTMLResponse)
def retraining(request: Request, user: User, session: SessionDep) -> Response:
    return render(
        request,
        "retrain.html",
        {"user": user, "page": "retrain", **views.retrain_page(session, admin=user.can("admin"))},
    )


def _problem(
    request: Request, user: UiUser, exc: DomainError | None, message: str = "", status: int = 0
) -> Response:
    """A domain error as a page (not the API's JSON), with the same status."""
    return render(
        request, "problem.html",
        {"user": user, "page": "", "message": str(exc) if exc is not None else message},
        status_code=exc.status_code if exc is not None else status,
    )  # fmt: skip
