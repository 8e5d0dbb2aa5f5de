"""The HTTP endpoint: ``GET /v1/metrics`` in the Prometheus text format, 404 elsewhere.

One thread serves requests one after another (as Prometheus scrapes), so every scrape reads the
cgroups on that thread and never on the daemon's RPC workers; a client that stalls is cut off after
:data:`REQUEST_TIMEOUT` seconds.  Responses are gzip-compressed when the scraper accepts it.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pyctr.errdefs import InvalidArgument, Unavailable

log = logging.getLogger("pyctr.plugin.pyctr.metrics.prometheus")

PATH = "/v1/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT = 10.0


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port`` (loopback) -> (host, port)."""
    text = address.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise InvalidArgument(f"invalid metrics address {address!r}: want HOST:PORT (127.0.0.1:1338)") from None
    if not 0 <= p <= 65535:
        raise InvalidArgument(f"invalid metrics address {address!r}: port out of range")
    return host, p


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class _Server(WSGIServer):
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsHTTPServer:
    """Serves ``render()`` at ``/v1/metrics`` on a daemon thread."""

    def __init__(self, render: Callable[[], bytes], address: str) -> None:
        self._render = render
        self._host, self._port = parse_address(address)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address bound (the real port when 0 was asked)."""
        if self._httpd is None:
            return self._host, self._port
        return self._host, int(self._httpd.server_address[1])

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path.rstrip("/") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: metrics are served at /v1/metrics\n"]
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"method not allowed\n"]
        try:
            body = self._render()
        except Exception as e:
            log.warning("rendering metrics failed", exc_info=True)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [f"rendering metrics failed: {type(e).__name__}: {e}\n".encode()]
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [] if method == "HEAD" else [body]

    def start(self) -> None:
        cls = _Server6 if ":" in self._host else _Server
        try:
            self._httpd = make_server(self._host, self._port, self.app, server_class=cls, handler_class=_Handler)
        except OSError as e:
            raise Unavailable(f"cannot serve metrics on {self._host}:{self._port}: {e.strerror or e}") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
