"""Keeping secrets out of messages: database passwords and the service role key never leave here.

Every error text that may quote a connection string or a server's answer passes through
:func:`redact` before it is raised, logged or stored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

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


SECRET_VARIABLES = ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_DB_URL", "PGPASSWORD")
"""Environment variables whose values (and, for a connection string, its password) are secrets."""


def password_in(dsn: str | None) -> str | None:
    """The password inside a connection string (URL or ``key=value`` style), or None."""
    if not dsn:
        return None
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        return unquote(password) if password else None
    match = _KV_PASSWORD.search(dsn)
    return match["secret"].strip("'") if match else None


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secrets in the environment, for :func:`redact`: the key, each connection string and its
    password, percent-encoded or not (a password may reach a message in either form)."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    for name in SECRET_VARIABLES:
        value = env.get(name)
        if not value:
            continue
        found.append(value)
        password = password_in(value) if name == "SUPABASE_DB_URL" else None
        if password:
            found.append(password)
            encoded = urlsplit(value).password if "://" in value else None
            if encoded and encoded != password:
                found.append(encoded)
    return sorted(set(found), key=len, reverse=True)  # longest first: a DSN before the password inside it


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` as one line (whitespace runs collapsed), cut at ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
