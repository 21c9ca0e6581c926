"""Keeping secrets out of messages: database passwords and the service role key never leave here.

Every error text that may quote a connection string or a server's answer passes through
:func:`redact` before it is raised, logged or stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# user:password@ in a URL-style connection string
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)", re.IGNORECASE)
# password=... in a key/value connection string
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# anything that looks like a JWT (Supabase's legacy keys) or a new-style secret key
_TOKENS = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|\bsb_secret_[A-Za-z0-9_-]{8,}")


def redact_dsn(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without passwords in connection strings, token-like strings or the given secrets."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return _TOKENS.sub(MASK, redact_dsn(text))
