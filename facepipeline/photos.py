"""A content-addressed photo cache: every photo is fetched once, ever.

Layout under the cache root::

    objects/ab/abcdef....   the bytes, named by their sha256
    manifest.sqlite3        reference -> sha256, size, status, error, fetched_at
    cache.lock              held shared by every open cache, exclusively while photos are removed

A reference is an ``http(s)://`` URL or a ``file://`` URI. Fetching is concurrent (bounded),
with timeouts and retries; a photo that cannot be fetched is recorded as failed with its reason
and is tried again on the next run. A URL fetched successfully is never fetched again; a local
file is read again only when its size or modification time changed (a photo edited in place).

What a fetch refuses, and why:

* a reference the :class:`~facepipeline.photo_policy.PhotoPolicy` does not allow (scheme, host,
  resolved address, every redirect hop): no connection is made, the photo fails as ``refused: ...``;
* a body cut short: with a ``Content-Length`` urllib3 notices; without one (the server just closes)
  only the image can tell, so every downloaded photo is checked to be whole
  (:func:`facepipeline.images.verify_complete`) before it is cached as ok. A truncated download
  cached as ok would fail as unreadable in the embed step on every run and never be fetched again;
* a body that trickles in: a whole photo must arrive within ``deadline_s``, not only each read
  within ``timeout_s``;
* a header announcing more pixels than the limit (a decompression bomb), before decoding.

Failures while the body is read (a reset connection, a truncated body) are retried within the run,
``retries`` times, like 5xx answers and timeouts before the body. Local files are read whole by
construction; a broken one is cached as it is and is read again only once it is edited.

Photos nothing uses any more are removed by :func:`forget_photos` (``facepipeline prune``), only
while no cache is open: :func:`exclusive_use` holds ``cache.lock`` exclusively, and an open
:class:`PhotoCache` holds it shared, so a run never finds a photo gone between its look at the
manifest and its read. A photo removed is fetched again by the next run that needs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse, urlunparse

import pyarrow as pa
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from facepipeline.errors import ImageError, PhotoFetchError
from facepipeline.images import image_size, verify_complete
from facepipeline.photo_policy import PhotoPolicy, PhotoRefused, resolve
from facepipeline.versions import listing

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
LOCK_FILE = "cache.lock"
MANIFEST = "manifest.sqlite3"
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class PhotoRecord:
    ref: str
    status: str  # "ok" | "failed"
    sha256: str | None = None
    size: int | None = None
    error: str | None = None
    fetched: bool = False
    """True when the bytes were fetched by this call, False when they came from the cache."""
    source_stamp: str | None = None
    """For a local file, its size and mtime *before* it was read (so an edit during the read shows)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


PHOTOS_SCHEMA = pa.schema(
    [("photo_ref", pa.string()), ("status", pa.string()), ("sha256", pa.string()), ("size", pa.int64()), ("error", pa.string())]
)


def records_to_table(records: Iterable[PhotoRecord]) -> pa.Table:
    rows = [{"photo_ref": r.ref, "status": r.status, "sha256": r.sha256, "size": r.size, "error": r.error} for r in records]
    return pa.Table.from_pylist(rows, schema=PHOTOS_SCHEMA)


def records_by_ref(table: pa.Table) -> dict[str, PhotoRecord]:
    columns = [table.column(name).to_pylist() for name in ("photo_ref", "status", "sha256", "size", "error")]
    return {ref: PhotoRecord(ref, status, sha256, size, error) for ref, status, sha256, size, error in zip(*columns, strict=True)}


@dataclass(frozen=True)
class FetchSummary:
    total: int
    ok: int
    failed: int
    fetched: int
    fetched_bytes: int
    from_cache: int
    attempts: int
    """Photos this call tried to fetch, failures (earlier ones retried) included."""

    refused: int = 0
    """Failed photos the photo policy refused (no connection was made)."""

    def line(self) -> str:
        return f"processed {self.ok}/{self.total} photos ({self.failed} failed; {self.fetched} fetched, {self.from_cache} from cache)"


def summarize(records: Iterable[PhotoRecord]) -> FetchSummary:
    records = list(records)
    fetched = [r for r in records if r.fetched and r.ok]
    return FetchSummary(
        total=len(records),
        ok=sum(r.ok for r in records),
        failed=sum(not r.ok for r in records),
        fetched=len(fetched),
        fetched_bytes=sum(r.size or 0 for r in fetched),
        from_cache=sum(r.ok and not r.fetched for r in records),
        attempts=sum(r.fetched for r in records),
        refused=sum(not r.ok and (r.error or "").startswith("refused:") for r in records),
    )


class PhotoCache:
    """The cache; ``policy`` says which references may be fetched.

    ``policy=None`` fetches any ``http(s)``/``file`` reference: for callers whose references are
    their own (tests, benchmarks). Everything that fetches a gallery's rows passes a policy
    (``resources.ArtifactStoreResource.photo_cache`` always does).
    """

    def __init__(
        self,
        root: Path,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        concurrency: int = 8,
        max_bytes: int = DEFAULT_MAX_BYTES,
        policy: PhotoPolicy | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self._objects_dir = str(self.objects)
        self.concurrency = max(1, concurrency)
        self.max_bytes = max_bytes
        self.policy = policy
        self.retries = retries
        self.deadline_s = deadline_s if deadline_s is not None else max(60.0, 6 * timeout_s)
        self._http = urllib3.PoolManager(
            maxsize=self.concurrency,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            retries=urllib3.Retry(
                total=retries,
                backoff_factor=0.2,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=frozenset({"GET"}),
                raise_on_status=False,
            ),
        )
        # Every connection goes to an address the policy vetted (see _GuardedConnectionMixin).
        self._http.pool_classes_by_scheme = _guarded_pools(policy)
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(self.root / MANIFEST, check_same_thread=False)
        self._lock_fd: int | None = None
        try:
            self._db.execute("pragma journal_mode = wal")
            with self._db:
                self._db.execute(
                    "create table if not exists photos ("
                    " reference text primary key, sha256 text, size integer,"
                    " status text not null, error text, fetched_at real not null, source_stamp text)"
                )
                columns = {row[1] for row in self._db.execute("pragma table_info(photos)")}
                if "source_stamp" not in columns:  # a cache made before local files were re-checked
                    self._db.execute("alter table photos add column source_stamp text")
            # Shared while open: a removal of photos (forget_photos) waits for every open cache, and
            # an opening waits for a removal under way (seconds) instead of reading half of it.
            self._lock_fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._db.close()
        self._http.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the shared lock
            self._lock_fd = None

    def __enter__(self) -> PhotoCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path_for(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def _holds(self, sha256: str) -> bool:
        """``path_for(sha256).is_file()`` (except that it never raises), without building a Path:
        asked of every photo of every run."""
        return os.path.isfile(os.path.join(self._objects_dir, sha256[:2], sha256))

    def read(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def fetch_all(
        self, refs: Iterable[str], progress: Callable[[int, int, int], None] | None = None
    ) -> list[PhotoRecord]:
        """Make every reference available in the cache; returns one record per distinct reference.

        ``progress(done, total, failed)`` is called as photos complete.
        """
        unique = list(dict.fromkeys(refs))
        records: dict[str, PhotoRecord] = {}
        missing = []
        with self._db_lock:
            known = dict(
                (ref, (status, sha, size, error, stamp))
                for ref, status, sha, size, error, stamp in self._db.execute(
                    "select reference, status, sha256, size, error, source_stamp from photos"
                )
            )
        for ref in unique:
            status, sha, size, error, stamp = known.get(ref, (None,) * 5)
            if status == "ok" and self._holds(sha) and stamp == _source_stamp(ref):
                records[ref] = PhotoRecord(ref=ref, status=status, sha256=sha, size=size, error=error)
            else:
                missing.append(ref)
        failed = 0
        done = len(records)
        unsaved: list[PhotoRecord] = []
        try:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="photo-fetch") as pool:
                for record in pool.map(self._fetch_one, missing):
                    records[record.ref] = record
                    unsaved.append(record)
                    if len(unsaved) >= 500:  # one transaction per batch, not one fsync per photo
                        self._remember(unsaved)
                    done += 1
                    failed += not record.ok
                    if progress:
                        progress(done, len(unique), failed)
        finally:
            self._remember(unsaved)  # what was fetched before an interruption stays known
        return [records[ref] for ref in unique]

    def _fetch_one(self, ref: str) -> PhotoRecord:
        stamp = _source_stamp(ref)
        try:
            if self.policy is not None:
                self.policy.check(ref)  # before anything touches the network or the disk
            data = self._download(ref)
        except (PhotoFetchError, ImageError) as exc:
            return PhotoRecord(ref=ref, status="failed", error=str(exc), fetched=True, source_stamp=stamp)
        except Exception as exc:  # one photo must never stop the others: record it, go on
            error = f"unexpected {type(exc).__name__}: {exc}"
            return PhotoRecord(ref=ref, status="failed", error=error, fetched=True, source_stamp=stamp)
        sha = hashlib.sha256(data).hexdigest()
        self._store(sha, data)
        return PhotoRecord(ref=ref, status="ok", sha256=sha, size=len(data), fetched=True, source_stamp=stamp)

    def _download(self, ref: str) -> bytes:
        scheme = urlparse(ref).scheme.lower()
        if scheme == "file":
            data = self._read_file(Path(unquote(urlparse(ref).path)))
            image_size(data)  # header check only: refuse HTML pages and empty bodies early
            return data
        if scheme in ("http", "https"):
            return self._read_http(ref)
        raise PhotoFetchError(f"unsupported photo reference scheme {scheme!r}")

    def _read_file(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise PhotoFetchError(f"file too large: {size:,} bytes (limit {self.max_bytes:,})")
            return path.read_bytes()
        except OSError as exc:
            raise PhotoFetchError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _read_http(self, url: str) -> bytes:
        """The photo at ``url``, whole and a sane image; a body that breaks off is tried again."""
        for attempt in range(self.retries + 1):
            try:
                data = self._get_following_redirects(url)
                verify_complete(data)  # a body cut short without Content-Length is caught here
                return data
            except _BodyBroken as exc:
                if attempt == self.retries:
                    raise PhotoFetchError(str(exc)) from exc
            except ImageError as exc:
                if attempt == self.retries or not _maybe_cut_short(exc):
                    raise
            time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def _get_following_redirects(self, url: str) -> bytes:
        for _hop in range(self._max_redirects() + 1):
            try:
                # No automatic redirects: each hop is checked against the policy first.
                response = self._http.request("GET", url, preload_content=False, redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                raise PhotoFetchError(f"request failed: {_reason(exc)}") from exc
            try:
                if response.status in REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise PhotoFetchError(f"HTTP {response.status} without a Location")
                    url = urljoin(url, location)
                    if self.policy is not None:
                        self.policy.check(url, redirect=True)
                    elif urlparse(url).scheme.lower() not in ("http", "https"):
                        raise PhotoRefused("refused: a redirect to a non-http(s) URL")
                    continue
                if response.status != 200:
                    raise PhotoFetchError(f"HTTP {response.status}")
                return self._read_body(response)
            finally:
                response.release_conn()
        raise PhotoFetchError(f"too many redirects (more than {self._max_redirects()})")

    def _max_redirects(self) -> int:
        return self.policy.max_redirects if self.policy is not None else 3

    def _read_body(self, response: urllib3.BaseHTTPResponse) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise PhotoFetchError(f"response too large: {int(declared):,} bytes (limit {self.max_bytes:,})")
        chunks, size = [], 0
        deadline = time.monotonic() + self.deadline_s
        try:
            while chunk := response.read1(64 * 1024):  # what has arrived: a trickle cannot hide from the deadline
                size += len(chunk)
                if size > self.max_bytes:
                    raise PhotoFetchError(f"response too large: over {self.max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise PhotoFetchError(f"too slow: the photo did not arrive within {self.deadline_s:g}s")
                chunks.append(chunk)
        except urllib3.exceptions.HTTPError as exc:
            raise _BodyBroken(f"download interrupted: {_reason(exc)}") from exc
        return b"".join(chunks)

    def _store(self, sha: str, data: bytes) -> None:
        target = self.path_for(sha)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _remember(self, records: list[PhotoRecord]) -> None:
        """Write records to the manifest in one transaction, and empty the list."""
        if not records:
            return
        now = time.time()
        rows = [(r.ref, r.sha256, r.size, r.status, r.error, now, r.source_stamp) for r in records]
        with self._db_lock, self._db:
            self._db.executemany(
                "insert into photos (reference, sha256, size, status, error, fetched_at, source_stamp)"
                " values (?, ?, ?, ?, ?, ?, ?)"
                " on conflict(reference) do update set sha256 = excluded.sha256, size = excluded.size,"
                " status = excluded.status, error = excluded.error, fetched_at = excluded.fetched_at,"
                " source_stamp = excluded.source_stamp",
                rows,
            )
        records.clear()


@dataclass(frozen=True)
class UnusedPhotos:
    """What :func:`forget_photos` may remove: photos (by sha256) and the manifest rows that lead to them."""

    sha256s: frozenset[str]
    references: frozenset[str]
    bytes: int


@contextmanager
def exclusive_use(root: Path) -> Iterator[bool]:
    """Hold the cache at ``root`` alone: yields True, or False at once when a cache is open there."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


def unused_photos(
    root: Path, used_refs: set[str], *, fetched_before: float, used_sha256s: frozenset[str] = frozenset()
) -> UnusedPhotos:
    """The photos at ``root`` that no reference in ``used_refs`` leads to, that are not in
    ``used_sha256s`` (what a run recorded it read) and that were not fetched (or stored) since
    ``fetched_before`` (a ``time.time()``); nothing is touched.

    Photos are content-addressed, so one object may serve several references: it stays while any
    reference kept leads to it. A manifest row goes with its photo, and so does a failed fetch's
    row that is neither used nor recent. An object without a row (a run killed between storing
    and recording it) goes once it is as old.
    """
    objects, manifest = root / "objects", root / MANIFEST
    rows: list[tuple[str, str | None, float]] = []
    if manifest.is_file():
        with closing(sqlite3.connect(manifest)) as db:
            rows = db.execute("select reference, sha256, fetched_at from photos").fetchall()
    kept_rows = {ref for ref, _, fetched_at in rows if ref in used_refs or fetched_at >= fetched_before}
    kept_shas = {sha for ref, sha, _ in rows if ref in kept_rows and sha} | used_sha256s
    sha256s, size = set(), 0
    for shard in listing(objects):
        for path in listing(shard):
            if path.name in kept_shas or path.name.startswith(".incoming-"):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_mtime < fetched_before:
                sha256s.add(path.name)
                size += stat.st_size
    return UnusedPhotos(frozenset(sha256s), frozenset(ref for ref, _, _ in rows if ref not in kept_rows), size)


def forget_photos(root: Path, unused: UnusedPhotos) -> int:
    """Remove ``unused`` (found by :func:`unused_photos` while :func:`exclusive_use` is held): the
    manifest rows first, then the files, so a photo is never recorded as cached without its file.
    Returns the bytes freed."""
    manifest = root / MANIFEST
    if unused.references and manifest.is_file():
        with closing(sqlite3.connect(manifest)) as db, db:
            db.executemany("delete from photos where reference = ?", [(ref,) for ref in sorted(unused.references)])
    freed = 0
    for sha in sorted(unused.sha256s):
        path = root / "objects" / sha[:2] / sha
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        freed += size
    return freed


def _source_stamp(ref: str) -> str | None:
    """What tells that a local file changed without reading it: its size and modification time.

    URLs have none: a URL's bytes are fetched once, ever (gallery photos are immutable uploads).
    """
    if ref[:8].lower().startswith(("http://", "https://")):
        return None  # the usual case, decided without parsing the URL: urlparse gives these schemes
    try:
        parsed = urlparse(ref)
    except ValueError:  # "file://[x": fetching it fails, as one photo's failure
        return None
    if parsed.scheme.lower() != "file":
        return None
    try:
        stat = Path(unquote(parsed.path)).stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def redact_ref(ref: str) -> str:
    """A photo reference safe to log: no credentials, no query string (signed URLs carry tokens)."""
    parsed = urlparse(ref)
    if parsed.scheme.lower() not in ("http", "https"):
        return ref
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urlunparse((parsed.scheme, netloc, parsed.path, "", "", ""))


class _BodyBroken(Exception):
    """The body broke off (reset, short read): worth another try."""


def _maybe_cut_short(exc: ImageError) -> bool:
    """Whether an image error may come from a body cut short (the same bytes again would not)."""
    return str(exc).startswith("corrupt image")


class _GuardedConnectionMixin:
    """Connect only to an address the policy vetted, and check the peer once connected.

    The host is resolved here, once; its addresses are vetted (a listed *name* must resolve to
    public addresses only); the socket connects to the vetted address itself, so no second lookup
    (a DNS rebinding) can swap it. TLS still checks the certificate against the host name.
    """

    policy: PhotoPolicy | None = None
    _dns_host: str
    host: str
    port: int

    def _new_conn(self) -> socket.socket:
        policy = self.policy
        if policy is None:
            return super()._new_conn()  # type: ignore[misc]
        name = self._guarded_name = getattr(self, "_guarded_name", None) or self._dns_host
        try:
            addresses = resolve(name, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        policy.vet_addresses(name, addresses)  # all of them: one private address refuses the name
        for number, address in enumerate(addresses):
            self._dns_host = address  # connect to this very address: no second lookup
            try:
                sock = super()._new_conn()  # type: ignore[misc]
            except (NewConnectionError, ConnectTimeoutError):
                if number == len(addresses) - 1:
                    raise
                continue
            try:
                policy.vet_addresses(name, [sock.getpeername()[0]])
            except BaseException:
                sock.close()
                raise
            return sock
        raise NewConnectionError(self, f"no address for {name}")  # type: ignore[arg-type]


def _guarded_pools(policy: PhotoPolicy | None) -> dict[str, type]:
    connection = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"policy": policy})
    tls = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), {"policy": policy})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": connection}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
    }


def _reason(exc: Exception) -> str:
    """What went wrong, without the URL (signed URLs carry tokens that must not reach logs)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "ReadTimeoutError (the server did not answer in time)"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "ConnectTimeoutError (no connection in time)"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "NewConnectionError (connection refused or host unreachable)"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "ProtocolError (connection broken mid-response)"
    return type(exc).__name__
