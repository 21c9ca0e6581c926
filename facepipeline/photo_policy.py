"""Which photo references may be fetched: OWASP's rules for fetching user-supplied URLs.

A photo URL comes from a gallery row that any app user may have written, so fetching it is a
server-side request on a stranger's behalf. The rules (OWASP SSRF prevention cheat sheet):

* **Schemes**: ``http`` and ``https`` only. ``file://`` only for references the local folder
  source produced itself, and only under that folder; never from a gallery row, never by redirect.
* **Hosts**: an allow-list, no deny-list. By default the Supabase project's own host (from
  ``SUPABASE_URL``, or derived from a Supabase connection string: ``db.<ref>.supabase.co`` and a
  pooler user ``postgres.<ref>`` both mean ``<ref>.supabase.co``), the embedded demo gallery's own
  photo server, plus ``FACEPIPELINE_PHOTO_HOSTS`` (comma-separated ``host`` or ``host:port``;
  ``host`` alone means the scheme's default port). A host not on the list is refused before any
  connection is made.
* **Addresses**: a listed *name* must resolve to public addresses only: private, loopback,
  link-local (169.254.169.254, the cloud metadata service), shared, multicast, reserved and
  unspecified addresses are refused. Only an allow-list entry that *is* such an IP literal (say
  ``127.0.0.1:8000``) allows it. The address is resolved once, checked, and the connection is made
  to that very address (no second lookup a DNS rebinding could change); the peer is checked again
  after the connect.
* **Redirects**: followed by hand, at most :data:`MAX_REDIRECTS`, every hop checked by the same
  rules (a redirect to ``file://`` or to an unlisted or private host is refused).

A refused photo is a failed photo with its reason (:class:`PhotoRefused`), never an exception that
stops a run; the reason names the host, never the URL's query string (signed URLs carry tokens).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from facepipeline.errors import FacePipelineError, PhotoFetchError

PHOTO_HOSTS_ENV = "FACEPIPELINE_PHOTO_HOSTS"
MAX_REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PhotoRefused(PhotoFetchError):
    """The photo policy does not allow this reference; nothing was fetched."""


class PhotoPolicyError(FacePipelineError):
    """The photo policy's configuration is malformed (a bad FACEPIPELINE_PHOTO_HOSTS entry)."""


@dataclass(frozen=True)
class HostRule:
    """One allowed host: a name or an IP literal, and a port (None: the scheme's default port)."""

    host: str
    port: int | None = None

    @property
    def literal(self) -> IPAddress | None:
        return _ip(self.host)

    def matches(self, host: str, port: int, scheme: str) -> bool:
        return self.host == host and port == (self.port if self.port is not None else DEFAULT_PORTS[scheme])

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_hosts(text: str | Iterable[str] | None) -> tuple[HostRule, ...]:
    """``"a.example, 127.0.0.1:8000, [::1]:80"`` (or a URL per entry) as host rules; raises PhotoPolicyError."""
    if text is None:
        return ()
    entries = text.split(",") if isinstance(text, str) else list(text)
    rules = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        rule = _rule_from_url(entry if "://" in entry else f"http://{entry}", keep_default_port=True)
        if rule is None or "/" in entry.split("://", 1)[-1].rstrip("/"):
            raise PhotoPolicyError(f"{PHOTO_HOSTS_ENV}: not a host or host:port: {entry!r}")
        rules.append(rule)
    return tuple(dict.fromkeys(rules))


def _rule_from_url(url: str, *, keep_default_port: bool = False) -> HostRule | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = normal_host(parts.hostname or "")
    if not host or parts.username or parts.password:
        return None
    if port is not None and not keep_default_port and port == DEFAULT_PORTS.get(parts.scheme.lower()):
        port = None
    return HostRule(host, port)


def normal_host(host: str) -> str:
    """Lower case, no trailing dot, an IP literal in its canonical form (so ``::1`` == ``0::1``)."""
    host = host.strip().strip("[]").rstrip(".").lower()
    ip = _ip(host)
    return str(ip) if ip is not None else host


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address_kind(ip: IPAddress) -> str | None:
    """Why an address is not a public one (``"link-local"``, ``"private"``...), or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return kind
    return None if ip.is_global else "non-public"


@dataclass(frozen=True)
class PhotoPolicy:
    """The references a run may fetch; see the module docstring for the rules and why."""

    hosts: tuple[HostRule, ...] = ()
    file_roots: tuple[Path, ...] = ()
    """Folders whose files may be read through ``file://`` references (the folder source's own)."""
    max_redirects: int = MAX_REDIRECTS

    def with_hosts(self, *rules: HostRule) -> PhotoPolicy:
        return PhotoPolicy(tuple(dict.fromkeys(self.hosts + rules)), self.file_roots, self.max_redirects)

    def describe(self) -> str:
        allowed = ", ".join(map(str, self.hosts)) or "no host"
        files = f"; file:// under {', '.join(map(str, self.file_roots))}" if self.file_roots else ""
        return f"http(s) from {allowed}{files}"

    def check(self, ref: str, *, redirect: bool = False) -> None:
        """Raise :class:`PhotoRefused` unless ``ref`` may be fetched; no network access.

        ``redirect``: the reference is a redirect's target (``file://`` is never followed).
        """
        try:
            parts = urlsplit(ref)
            port = parts.port
        except ValueError:
            raise PhotoRefused("refused: not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme == "file" and not redirect:
            self._check_file(Path(unquote(parts.path)))
            return
        if scheme not in DEFAULT_PORTS:
            where = "a redirect to " if redirect else ""
            raise PhotoRefused(f"refused: {where}{scheme or 'no'}:// is not allowed (photos are fetched over http(s) only)")
        host = normal_host(parts.hostname or "")
        if not host:
            raise PhotoRefused("refused: the URL has no host")
        port = port if port is not None else DEFAULT_PORTS[scheme]
        if not any(rule.matches(host, port, scheme) for rule in self.hosts):
            shown = f"[{host}]" if ":" in host else host
            where = "redirect to " if redirect else ""
            raise PhotoRefused(
                f"refused: {where}{shown}:{port} is not an allowed photo host (allowed: {', '.join(map(str, self.hosts)) or 'none'};"
                f" add it to {PHOTO_HOSTS_ENV})"
            )

    def _check_file(self, path: Path) -> None:
        if not self.file_roots:
            raise PhotoRefused("refused: file:// photos are only read for the local folder source")
        normal = Path(os.path.normpath(path))
        if not any(normal.is_relative_to(root) for root in self.file_roots):
            raise PhotoRefused("refused: a file:// photo outside the source's folder")

    def vet_addresses(self, host: str, addresses: Iterable[str]) -> None:
        """Raise :class:`PhotoRefused` when ``host`` (a name) resolved to a non-public address.

        An allowed IP literal is allowed whatever its kind: it was named on purpose.
        """
        host = normal_host(host)
        if _ip(host) is not None and any(rule.host == host for rule in self.hosts):
            return
        for address in addresses:
            ip = _ip(address.split("%", 1)[0])
            kind = address_kind(ip) if ip is not None else "unparsable"
            if kind is not None:
                raise PhotoRefused(
                    f"refused: {host} resolves to {address}, a {kind} address (only an allow-list entry naming that IP allows it)"
                )


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (raises ``socket.gaierror``)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


# -- the policy of a source ----------------------------------------------------------------------


def supabase_host_from_url(url: str | None) -> HostRule | None:
    """The host of a Supabase project URL (``https://<ref>.supabase.co``)."""
    return _rule_from_url(url.strip()) if url and url.strip() else None


def supabase_host_from_dsn(dsn: str | None) -> HostRule | None:
    """``<ref>.supabase.co`` for a Supabase connection string, else None.

    Direct connections use host ``db.<ref>.supabase.co``; the pooler uses a shared host
    (``aws-0-<region>.pooler.supabase.com``) and the user ``postgres.<ref>``.
    """
    if not dsn:
        return None
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
    except Exception:  # a malformed DSN is the source's error to report, not ours
        return None
    host, user = str(params.get("host") or "").lower().rstrip("."), str(params.get("user") or "")
    if host.startswith("db.") and host.endswith(".supabase.co") and host.count(".") == 3:
        return HostRule(host.removeprefix("db."))
    if host.endswith(".pooler.supabase.com") and user.startswith("postgres.") and user.count(".") == 1:
        ref = user.removeprefix("postgres.").lower()
        if ref.isalnum():
            return HostRule(f"{ref}.supabase.co")
    return None


def policy_for_source(
    spec: str,
    *,
    database_url: str | None = None,
    supabase_url: str | None = None,
    embedded_home: str | Path | None = None,
    extra_hosts: str | Iterable[str] | None = None,
) -> PhotoPolicy:
    """The photo policy of the source ``spec`` (as :func:`facepipeline.sources.open_source` takes it).

    Computed from the source's configuration alone: nothing is opened or started.
    """
    from facepipeline.sources.base import connection_string_in

    rules = list(parse_hosts(extra_hosts))
    file_roots: tuple[Path, ...] = ()
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        file_roots = (Path(rest).expanduser().resolve(),)
    elif spec == "supabase":
        rules += filter(None, [supabase_host_from_url(supabase_url)])
    elif spec == "embedded":
        rules += filter(None, [embedded_photo_host(embedded_home)])
    elif kind in ("postgres", "postgresql"):
        rules += filter(None, [supabase_host_from_dsn(connection_string_in(spec) or database_url)])
    return PhotoPolicy(tuple(dict.fromkeys(rules)), file_roots)


def embedded_photo_host(embedded_home: str | Path | None) -> HostRule | None:
    """The embedded gallery's own photo server (127.0.0.1 and the port it records), if it has one."""
    from facepipeline.gallery import photo_server
    from facepipeline.settings import DEFAULT_HOME

    root = Path(embedded_home or Path(DEFAULT_HOME) / "gallery").expanduser().resolve()
    url = photo_server.recorded_url(root)
    return _rule_from_url(url, keep_default_port=True) if url else None
