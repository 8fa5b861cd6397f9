"""What a key may see: server internals (paths, training configs, raw error text) are for admins.

Read-scope keys get the same resources with server paths and training configs left out and
job errors redacted: the kind of error and where (column, row number) stay, data values
(quoted text, numbers with a fraction, JSON rows), paths and lists do not. Admin keys (and
every caller when DFCL_AUTH_ENABLED=false) see everything.
"""

from __future__ import annotations

import re
from typing import Any

from app.auth import Principal

REDACTED = "<redacted>"
# Card entries that name server files or carry the full training configuration.
PRIVATE_CARD_KEYS = ("training_data", "config")
# Request parameters that are server paths or training configuration.
PRIVATE_PARAMS = ("path", "base_rct", "base_obs", "eval_data", "config")
MAX_PUBLIC_ERROR = 500

_INNERMOST_OBJECT = re.compile(r"\{[^{}]*\}")
_INNERMOST_LIST = re.compile(r"\[[^\[\]]*\]")
_COLUMN_NAME = re.compile(r"\bcolumn (['\"])([A-Za-z_][A-Za-z0-9_ .-]{0,63})\1")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?:(?<![\w.])(?:~|\.{1,2})?/[^\s'\",;:()\[\]{}]*|\b[\w.-]+(?:/[\w.-]+)+)")
_DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+\.\d*(?:[eE][-+]?\d+)?|\b\d+[eE][-+]?\d+\b")


def is_admin(principal: Principal) -> bool:
    return "admin" in principal.scopes


def redact_text(text: str | None) -> str | None:
    """An error message without the data it quoted: first line, no values, paths or rows."""
    if text is None:
        return None
    line = text.strip().splitlines()[0] if text.strip() else ""
    protected: list[str] = []

    def keep_column(match: re.Match[str]) -> str:
        protected.append(match.group(0))
        return f"\x00{len(protected) - 1}\x00"

    line = _COLUMN_NAME.sub(keep_column, line)
    line = _QUOTED.sub("'…'", line)
    # Innermost first, with marks that the patterns do not match again, until none is left.
    for pattern, mark in ((_INNERMOST_OBJECT, "\x01"), (_INNERMOST_LIST, "\x02")):
        n = 1
        while n:
            line, n = pattern.subn(mark, line)
    line = _PATH.sub("<path>", line)
    line = _DECIMAL.sub("<number>", line)
    line = line.replace("\x01", "{…}").replace("\x02", "[…]")
    line = re.sub(r"\x00(\d+)\x00", lambda m: protected[int(m.group(1))], line)
    if len(line) > MAX_PUBLIC_ERROR:
        line = line[: MAX_PUBLIC_ERROR - 1] + "…"
    return line


def public_card(card: dict[str, Any]) -> dict[str, Any]:
    """A model card without its training-data paths and training configuration."""
    return {k: v for k, v in card.items() if k not in PRIVATE_CARD_KEYS}


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Job parameters with server paths and training configuration replaced by a marker."""
    return {
        k: (REDACTED if k in PRIVATE_PARAMS and v not in (None, {}, "") else v)
        for k, v in params.items()
    }


def public_data(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Row counts and fingerprints without server paths (or the card's training_data)."""
    if data is None:
        return None
    return {k: v for k, v in data.items() if "path" not in k and k not in PRIVATE_CARD_KEYS}
