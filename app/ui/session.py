"""Dashboard sessions and CSRF tokens: signed cookies, so no session table and no migration.

Why signed tokens: every worker (and every process after a restart) must accept a session any
other one issued, without shared memory. A session cookie is `<key id>.<expiry>.<signature>`
with signature = HMAC-SHA256(signing key, "session|<key id>|<expiry>"). The API key itself is
never stored in the cookie nor ever put in a URL: it is only posted once, by the login form.

The signing key is HMAC(DFCL_UI_SECRET, the API key's stored SHA-256). Why per key: revoking
a key (or its row disappearing) ends its sessions at once, because each request re-reads the
row to recompute the key. Why the secret: with DFCL_UI_SECRET set, reading the database is not
enough to forge a session. When it is empty the signing key is still stable across workers
(it comes from the shared database), at the price that a database reader could forge one; set
the secret in production (README, "Dashboard").

CSRF: every form of a logged-in page carries a token derived from the session (HMAC of the
same signing key, so it cannot be computed without it), checked with a constant-time compare
on every POST; fetch() calls send it as `X-CSRF-Token`. The login form, which has no session
yet, uses a double-submit cookie instead. Both cookies are SameSite=Strict, as defence in depth.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.config import Settings
from app.tables import ApiKey

SESSION_COOKIE = "dfcl_session"
LOGIN_CSRF_COOKIE = "dfcl_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
ANONYMOUS_ID = "anonymous"  # the only session id accepted when DFCL_AUTH_ENABLED=false
_DEFAULT_SECRET = b"dfcl-ui-default-secret"  # only mixes in the per-key hash (see above)


@dataclass(frozen=True)
class UiUser:
    """Who is logged in: the key's id, name and scopes, and this session's CSRF token."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    csrf: str
    expires: int

    def can(self, scope: str) -> bool:
        """Same rule as the API (app/auth.py): the scope itself, or admin."""
        return scope in self.scopes or "admin" in self.scopes


def _signing_key(settings: Settings, key_hash: str) -> bytes:
    secret = settings.ui_secret.get_secret_value().encode() or _DEFAULT_SECRET
    return hmac.new(secret, b"dfcl-ui|" + key_hash.encode(), hashlib.sha256).digest()


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def issue(settings: Settings, key_id: str, key_hash: str, now: float | None = None) -> str:
    """A session token for `key_id`, valid DFCL_UI_SESSION_HOURS from now."""
    expires = int((now if now is not None else time.time()) + settings.ui_session_hours * 3600)
    signature = _mac(_signing_key(settings, key_hash), "session", key_id, str(expires))
    return f"{key_id}.{expires}.{signature}"


def verify(
    session: Session, settings: Settings, token: str, now: float | None = None
) -> UiUser | None:
    """The user a session token stands for, or None if it is malformed, expired, forged, or
    its API key was revoked since."""
    try:
        key_id, expires_text, signature = token.split(".")
        expires = int(expires_text)
    except ValueError:
        return None
    if expires < (now if now is not None else time.time()):
        return None
    scopes: tuple[str, ...]
    if key_id == ANONYMOUS_ID:
        if settings.auth_enabled:
            return None
        name, scopes, key_hash = ANONYMOUS_ID, ("admin",), ANONYMOUS_ID
    else:
        try:
            row = session.get(ApiKey, uuid.UUID(key_id))
        except ValueError:
            return None
        if row is None or row.revoked_at is not None:
            return None
        name, scopes, key_hash = row.name, tuple(row.scopes), row.key_sha256
    signing_key = _signing_key(settings, key_hash)
    if not hmac.compare_digest(signature, _mac(signing_key, "session", key_id, str(expires))):
        return None
    csrf = _mac(signing_key, "csrf", key_id, str(expires))
    return UiUser(key_id, name, scopes, csrf, expires)


def anonymous_hash() -> str:
    """The stand-in key hash of the anonymous session (auth disabled)."""
    return ANONYMOUS_ID


def new_login_csrf() -> str:
    """The random value of the login form's double-submit cookie."""
    return secrets.token_urlsafe(24)


def same_token(expected: str | None, given: str | None) -> bool:
    """Constant-time token comparison; a missing token never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
