"""The HTTP side of the registry client: a pooled ``http.client`` transport and a per-repository client.

Why the standard library: bench/bench_http.py measured a 200 MB blob from docker-registry over loopback
with ``http.client``, urllib3 and httpx; see bench/RESULTS.md.  ``http.client`` with a 1 MiB
``readinto`` buffer was as fast as the fastest, needs no dependency, and gives direct control over the
socket timeouts (connect and read apart) and connection reuse.

:class:`Transport` keeps idle keep-alive connections per ``(scheme, host)`` and makes one attempt per
call.  :class:`RepositoryClient` adds, for one repository on one registry: base URL and headers,
authentication (401 -> challenge -> token or basic -> one retry), redirects (to blob storage on another
host, without the registry's ``Authorization``), retries with exponential backoff on 5xx, 429 and
dropped connections, and one-line errors naming the registry and repository.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from pyctr.errdefs import (
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PyctrError,
    Unavailable,
)

from .auth import Authorizer, Credentials, scope_for
from .hosts import HostConfig, Hosts, default_ssl_context

log = logging.getLogger("pyctr.distribution")

USER_AGENT = "pyctr/0.1"
BUFSIZE = 1 << 20
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5

Body = bytes | BinaryIO | None


@dataclass(frozen=True)
class Timeouts:
    connect: float = 15.0
    read: float = 30.0


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, timeouts: Timeouts) -> None:
        super().__init__(host, port, timeout=timeouts.connect, blocksize=BUFSIZE)
        self._read_timeout = timeouts.read

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock.settimeout(self._read_timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, timeouts: Timeouts, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeouts.connect, context=context, blocksize=BUFSIZE)
        self._read_timeout = timeouts.read

    def connect(self) -> None:
        super().connect()  # TCP connect and TLS handshake under the connect timeout
        assert self.sock is not None
        self.sock.settimeout(self._read_timeout)


class InFlight:
    """The connections one operation (a pull) has in flight, so it can be stopped at once:
    :meth:`abort` shuts their sockets down, which wakes any thread blocked reading them."""

    def __init__(self) -> None:
        self._conns: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self.aborted = False

    def add(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._conns.add(conn)
            aborted = self.aborted
        if aborted:
            _shutdown(conn)

    def discard(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            conns = list(self._conns)
        for c in conns:
            _shutdown(c)


def _shutdown(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Response:
    """One HTTP response; the body is read on demand.  ``close()`` (or reading to the end) hands the
    connection back to the pool when it can be reused."""

    def __init__(self, transport: Transport, key: tuple[str, str], conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse, url: str, method: str, inflight: InFlight | None = None) -> None:
        self._transport = transport
        self._inflight = inflight
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self.url = url
        self.method = method
        self.status = resp.status
        self.reason = resp.reason
        self.headers = resp.headers

    def header(self, name: str, default: str = "") -> str:
        v = self.headers.get(name)
        return default if v is None else str(v)

    def readinto(self, buf: memoryview) -> int:
        n = self._resp.readinto(buf)
        if n == 0:
            self.close()
        return n

    def read(self, limit: int = -1) -> bytes:
        """The whole body; more than ``limit`` bytes (when >= 0) raises :class:`DataLoss`.  The
        response is closed whatever happens."""
        try:
            data = self._resp.read(limit + 1) if limit >= 0 else self._resp.read()
        except BaseException:
            self.close(reuse=False)
            raise
        if 0 <= limit < len(data):
            self.close(reuse=False)
            raise DataLoss(f"{self.url}: body larger than {limit} bytes")
        self.close()
        return data

    def close(self, reuse: bool = True) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._inflight is not None:
            self._inflight.discard(conn)
            reuse = reuse and not self._inflight.aborted
        if reuse and not self._resp.isclosed():
            # drain a short remainder so the connection can be reused; give up on long bodies
            try:
                rest = self._resp.read(65536)
                reuse = self._resp.isclosed() and len(rest) < 65536
            except (OSError, http.client.HTTPException):
                reuse = False
        if reuse and not self._resp.will_close:
            self._transport._release(self._key, conn)
        else:
            # the response's file object holds the socket open too: close both
            self._resp.close()
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(reuse=exc[0] is None)


class Transport:
    """Keep-alive connections per ``(scheme, netloc)``; one attempt per :meth:`request`."""

    def __init__(self, hosts: Hosts | None = None, timeouts: Timeouts | None = None,
                 max_idle: int = 8) -> None:
        self.hosts = hosts or Hosts("")
        self.timeouts = timeouts or Timeouts()
        self.max_idle = max_idle
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._ssl: dict[tuple[str, str], ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self.connections_made = 0

    def set_ssl_context(self, netloc: str, ctx: ssl.SSLContext) -> None:
        with self._lock:
            self._ssl[("https", netloc)] = ctx

    def _new(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(f"//{netloc}")
        host, port = parts.hostname or netloc, parts.port
        conn: http.client.HTTPConnection
        if scheme == "http":
            conn = _HTTPConnection(host, port, self.timeouts)
        else:
            ctx = self._ssl.get((scheme, netloc)) or default_ssl_context()
            conn = _HTTPSConnection(host, port, self.timeouts, ctx)
        with self._lock:
            self.connections_made += 1
            self._all.add(conn)
        return conn

    def _get(self, key: tuple[str, str]) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return self._new(*key), False

    def _release(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()

    def request(self, method: str, url: str, headers: Mapping[str, str], body: Body = None,
                inflight: InFlight | None = None) -> Response:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"cannot fetch {url!r}: not an http(s) URL")
        key = (parts.scheme, parts.netloc)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        hdrs = {"User-Agent": USER_AGENT, **headers}
        if body is None and method in ("PUT", "POST", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        while True:
            conn, reused = self._get(key)
            try:
                if inflight is not None:
                    if conn.sock is None:
                        conn.connect()
                    inflight.add(conn)
                conn.request(method, target, body=body, headers=hdrs)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if inflight is not None:
                    inflight.discard(conn)
                if reused and (body is None or isinstance(body, bytes)) and not (inflight and inflight.aborted):
                    continue  # a keep-alive connection the server had closed: try a fresh one
                raise
            except BaseException:
                conn.close()
                if inflight is not None:
                    inflight.discard(conn)
                raise
            return Response(self, key, conn, resp, url, method, inflight)

    def close(self) -> None:
        """Close every connection, idle or still held by a response nobody closed."""
        with self._lock:
            conns = list(self._all)
            self._idle.clear()
        for c in conns:
            c.close()


def registry_error(resp: Response, body: bytes) -> str:
    """The first ``errors[].message`` of a registry's JSON error body, or the HTTP reason."""
    try:
        doc = json.loads(body)
        errs = doc.get("errors") if isinstance(doc, dict) else None
        if errs:
            e = errs[0]
            msg = str(e.get("message") or e.get("code") or "").strip()
            if msg:
                return msg
    except (ValueError, AttributeError, TypeError):
        pass
    return f"{resp.status} {resp.reason}".strip()


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, socket.timeout, http.client.IncompleteRead, http.client.RemoteDisconnected,
    http.client.BadStatusLine, OSError,
)


@dataclass
class RetryPolicy:
    retries: int = 3
    backoff: float = 0.5  # first delay, doubled each time, with jitter
    max_backoff: float = 10.0

    def delay(self, attempt: int, retry_after: str = "") -> float:
        if retry_after.isdigit():
            return min(float(retry_after), self.max_backoff)
        d: float = min(self.backoff * (2 ** attempt), self.max_backoff)
        return d * (0.75 + random.random() * 0.5)


def describe_os_error(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({e.verify_message}); add the CA to certs.d or use --plain-http"
    if isinstance(e, ssl.SSLError):
        return f"TLS error ({e.reason or e}); is the registry plain HTTP? then use --plain-http"
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__


class RepositoryClient:
    """Requests for one repository on one registry, with auth, redirects, retries and clear errors."""

    def __init__(self, transport: Transport, host: HostConfig, repository: str, authorizer: Authorizer,
                 actions: Iterable[str] = ("pull",), retry: RetryPolicy | None = None) -> None:
        self.transport = transport
        self.host = host
        self.repository = repository
        self.auth = authorizer
        self.actions = tuple(actions)
        self.retry = retry or RetryPolicy()
        if host.scheme == "https":
            transport.set_ssl_context(host.host, transport.hosts.ssl_context(host))

    @property
    def where(self) -> str:
        return f"{self.host.domain}/{self.repository}"

    def url(self, path: str) -> str:
        return f"{self.host.api_url}/{self.repository}/{path}"

    def scopes(self, extra: Iterable[str] = ()) -> list[str]:
        return [scope_for(self.repository, self.actions), *extra]

    def request(
        self,
        method: str,
        path_or_url: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        *,
        ok: Iterable[int] = (200,),
        what: str = "",
        extra_scopes: Iterable[str] = (),
        retries: int | None = None,
        follow_redirects: bool = True,
        on_retry: Callable[[int, str], None] | None = None,
        inflight: InFlight | None = None,
    ) -> Response:
        """Send, authenticate, follow redirects, retry; return a response whose status is in ``ok``.

        A non-``ok`` status becomes a :class:`PyctrError` naming the registry and repository.  Only
        requests whose body is ``None`` or bytes are retried.
        """
        ok = frozenset(ok)
        what = what or f"{method} {path_or_url}"
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        scopes = self.scopes(extra_scopes)
        max_retries = self.retry.retries if retries is None else retries
        if body is not None and not isinstance(body, bytes):
            max_retries = 0
        attempt = 0
        auth_tries = 0
        redirects = 0
        while True:
            same_host = urllib.parse.urlsplit(url).netloc == self.host.host
            hdrs: dict[str, str] = dict(self.host.headers) if same_host else {}
            hdrs.update(headers or {})
            if same_host:
                authz = self.auth.header(scopes)
                if authz:
                    hdrs["Authorization"] = authz
            try:
                resp = self.transport.request(method, url, hdrs, body, inflight)
            except PyctrError:
                raise
            except TRANSIENT_ERRORS as e:
                if isinstance(e, ssl.SSLError) or attempt >= max_retries:
                    cls = DeadlineExceeded if isinstance(e, TimeoutError | socket.timeout) else Unavailable
                    raise cls(f"{what} on {self.where}: {describe_os_error(e)}"
                              + (f" (after {attempt + 1} attempts)" if attempt else "")) from None
                delay = self.retry.delay(attempt)
                log.info("%s on %s: %s; retrying in %.1fs", what, self.where, describe_os_error(e), delay)
                if on_retry:
                    on_retry(attempt + 1, describe_os_error(e))
                attempt += 1
                time.sleep(delay)
                continue
            st = resp.status
            if st in ok:
                return resp
            if st == 401 and same_host and auth_tries < 2:
                challenge = resp.header("WWW-Authenticate")
                with contextlib.suppress(PyctrError, OSError, http.client.HTTPException):
                    resp.read(1 << 16)
                auth_tries += 1
                had = self.auth.challenge is not None
                if challenge and self.auth.learn(challenge) and (auth_tries == 1 or not had):
                    # first 401: we learnt how to authenticate; second: maybe the token expired
                    self.auth.header(scopes, refresh=True)
                    continue
                self._raise(resp, b"", what)
            if st in REDIRECT_STATUSES and follow_redirects and method in ("GET", "HEAD"):
                loc = resp.header("Location")
                resp.close()
                if not loc or redirects >= MAX_REDIRECTS:
                    raise Unavailable(f"{what} on {self.where}: too many or empty redirects")
                redirects += 1
                url = urllib.parse.urljoin(url, loc)
                continue
            if st in RETRY_STATUSES and attempt < max_retries:
                retry_after = resp.header("Retry-After")
                with contextlib.suppress(PyctrError, OSError, http.client.HTTPException):
                    resp.read(1 << 16)
                delay = self.retry.delay(attempt, retry_after)
                log.info("%s on %s: HTTP %s; retrying in %.1fs", what, self.where, st, delay)
                if on_retry:
                    on_retry(attempt + 1, f"HTTP {st}")
                attempt += 1
                time.sleep(delay)
                continue
            try:
                err_body = b"" if method == "HEAD" else resp.read(1 << 16)
            except (PyctrError, OSError, http.client.HTTPException):
                err_body = b""
            self._raise(resp, err_body, what)

    def _raise(self, resp: Response, body: bytes, what: str) -> NoReturn:
        resp.close(reuse=False)
        st = resp.status
        detail = registry_error(resp, body)
        if st == 401:
            creds = self.auth.credentials
            hint = (f"credentials for {creds.username!r} refused" if creds
                    else "no credentials; use --user or docker login")
            raise PermissionDenied(f"{self.where}: unauthorized: {detail} ({hint})")
        if st == 403:
            raise PermissionDenied(f"{self.where}: access denied: {detail}")
        if st == 404:
            raise NotFound(f"{what}: not found on {self.where}: {detail}")
        if st == 416:
            raise InvalidArgument(f"{what} on {self.where}: range not satisfiable")
        if st in RETRY_STATUSES:
            raise Unavailable(f"{what} on {self.where}: registry answered {detail}")
        raise PyctrError(f"{what} on {self.where}: unexpected answer {detail}")


def make_authorizer(transport: Transport, host: HostConfig, credentials: Credentials | None) -> Authorizer:
    """An authorizer whose token requests go through ``transport`` (TLS per the host's settings)."""

    def fetch(method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":
            # the token service is reached with the registry's TLS settings (CA, client certificate),
            # as containerd does with its one HTTP client per host
            transport.set_ssl_context(parts.netloc, transport.hosts.ssl_context(host))
        last: BaseException | None = None
        for attempt in range(3):
            try:
                with transport.request(method, url, headers, body) as resp:
                    return resp.status, resp.read(1 << 20)
            except TRANSIENT_ERRORS as e:
                last = e
                time.sleep(0.2 * (attempt + 1))
        raise Unavailable(f"{host.domain}: cannot reach the token service {url.split('?')[0]}: "
                          f"{describe_os_error(last) if last else 'failed'}")

    return Authorizer(host.domain, credentials, fetch)
