"""The daemon side of the RPC: accept connections on a unix socket and serve calls on server objects.

Every connection starts from one root object (:class:`RootService`); a call names an object (a handle
id, 0 for the root) and a method; results that have no value encoding (service objects, writers, task
handles) stay in the server as handles owned by the connection.  Requests run concurrently on a
thread pool; a result that is an iterator is streamed item by item on a thread of its own.  When a
connection closes, every handle it held is released: objects with ``__pyctr_release__`` (writers,
subscriptions) are told to let go, and streams are stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import struct
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import __version__
from ..errdefs import DeadlineExceeded, InvalidArgument, NotFound, PyctrError
from . import PROTOCOL_VERSION
from .codec import Handle, decode_body, encode_frame, make_ext_hook, make_packer, read_frame

log = logging.getLogger("pyctr.daemon.rpc")

SEND_TIMEOUT_S = 30

#: A stream producer may yield this to let the server check that the client is still there.
KEEPALIVE: Any = object()


class _Conn:
    _ids = itertools.count(1)

    def __init__(self, server: RPCServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.id = next(self._ids)
        self.handles: dict[int, Any] = {0: server.root}
        self._next = itertools.count(1)
        self._hlock = threading.Lock()
        self._wlock = threading.Lock()
        self._streams: dict[int, threading.Event] = {}
        self.closed = False
        self.packer_lock = threading.Lock()
        self.packer = make_packer(self._to_handle)
        self.ext_hook = make_ext_hook(self._from_handle)

    def _to_handle(self, obj: Any) -> int:
        with self._hlock:
            hid = next(self._next)
            self.handles[hid] = obj
            return hid

    def _from_handle(self, hid: int) -> Any:
        try:
            return self.handles[hid]
        except KeyError:
            raise NotFound(f"no object with handle {hid} on this connection") from None

    def send(self, msg: dict[str, Any]) -> None:
        with self.packer_lock:
            frame = encode_frame(self.packer, msg)
        with self._wlock:
            if self.closed:
                return
            try:
                self.sock.sendall(frame)
            except OSError as e:  # a client that stopped reading: drop it, never stall others
                log.info("connection %d: send failed (%s); closing it", self.id, e)
                self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for ev in list(self._streams.values()):
            ev.set()
        with self._hlock:
            objs = [o for h, o in self.handles.items() if h]
            self.handles.clear()
        for obj in objs:
            _release(obj)


def _release(obj: Any) -> None:
    rel = getattr(obj, "__pyctr_release__", None)
    if rel is not None:
        try:
            rel()
        except Exception:
            log.warning("releasing %r failed", obj, exc_info=True)


class RootService:
    """What handle 0 of every connection is: the engine plus daemon-level calls."""

    def __init__(self, engine: Any, daemon_info: dict[str, Any]) -> None:
        self.engine = engine
        self._info = daemon_info

    def version(self) -> dict[str, Any]:
        import platform

        return {"version": __version__, "protocol": PROTOCOL_VERSION, "python": platform.python_version(),
                "pid": os.getpid(), **self._info}

    def health(self) -> str:
        return "SERVING"

    def plugin(self, type_: str, name: str | None = None) -> Any:
        return self.engine.plugin(type_, name)

    def subscribe_events(self, filters: list[str] | None = None, queue_size: int = 4096) -> Iterator[dict[str, Any]]:
        sub = self.engine.events.subscribe(filters or None, queue_size=queue_size)

        def gen() -> Iterator[dict[str, Any]]:
            try:
                while True:
                    env = sub.get(0.5)
                    if env is None:
                        yield KEEPALIVE  # lets the pump notice a closed connection
                        continue
                    yield env.to_dict()
            finally:
                sub.close()

        return gen()

    def publish_event(self, namespace: str, topic: str, event: dict[str, Any] | None = None) -> None:
        self.engine.events.publish(namespace, topic, event or {})

    def forward_event(self, envelope: dict[str, Any]) -> None:
        self.engine.events.forward(envelope)


class RPCServer:
    def __init__(self, root: RootService, address: str, *, workers: int = 64,
                 request_hook: Any = None) -> None:
        self.root = root
        self.address = address
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc")
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._inflight = 0
        self._idle = threading.Condition()
        self.request_hook = request_hook  # called (service, method, seconds, error_code|None)

    # -- lifecycle -----------------------------------------------------------------------------

    def listen(self) -> None:
        d = os.path.dirname(self.address)
        os.makedirs(d, mode=0o711, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o117)
        try:
            s.bind(self.address)
        finally:
            os.umask(old)
        os.chmod(self.address, 0o660)
        s.listen(512)
        self._sock = s

    def serve_forever(self) -> None:
        assert self._sock is not None
        self._sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                cs, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            cs.settimeout(None)
            cs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT_S, 0))
            conn = _Conn(self, cs)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve_conn, args=(conn,), name=f"conn-{conn.id}", daemon=True).start()

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace`` seconds), close connections."""
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
        deadline = time.monotonic() + grace
        with self._idle:
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- per connection ------------------------------------------------------------------------

    def _serve_conn(self, conn: _Conn) -> None:
        try:
            while not conn.closed:
                body = read_frame(conn.sock)
                if body is None:
                    break
                try:
                    msg = decode_body(body, conn.ext_hook)
                except PyctrError as e:
                    log.warning("connection %d: %s", conn.id, e)
                    break
                if not isinstance(msg, dict):
                    break
                kind = msg.get("t")
                if kind in ("call", "get"):
                    self._begin()
                    try:
                        self._pool.submit(self._handle, conn, msg)
                    except RuntimeError:  # shutting down
                        self._end()
                        conn.send({"t": "err", "id": msg.get("id"), "c": "unavailable",
                                   "m": "the daemon is shutting down"})
                elif kind == "hello":
                    conn.send({"t": "hello", "v": PROTOCOL_VERSION, "server": f"pyctrd {__version__}"})
                elif kind == "rel":
                    with conn._hlock:
                        objs = [conn.handles.pop(h, None) for h in msg.get("h", []) if h]
                    for o in objs:
                        if o is not None:
                            _release(o)
                elif kind == "cancel":
                    ev = conn._streams.get(msg.get("id", -1))
                    if ev is not None:
                        ev.set()
        except (OSError, ConnectionError) as e:
            log.debug("connection %d closed: %s", conn.id, e)
        finally:
            conn.close()
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._lock:
                self._conns.discard(conn)

    def _begin(self) -> None:
        with self._idle:
            self._inflight += 1

    def _end(self) -> None:
        with self._idle:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def _handle(self, conn: _Conn, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        t0 = time.perf_counter()
        target_desc = "?"
        code: str | None = None
        try:
            deadline = msg.get("dl")
            if deadline and time.time_ns() > deadline:
                raise DeadlineExceeded("the request's deadline passed before the daemon could serve it")
            obj = conn._from_handle(int(msg.get("h", 0)))
            name = msg.get("n")
            if not isinstance(name, str) or not name or name.startswith("_"):
                raise InvalidArgument(f"invalid attribute name {name!r}")
            target_desc = f"{type(obj).__name__}.{name}"
            log.debug("conn %d req %s %s", conn.id, rid, target_desc)
            attr: Any = getattr(obj, name, _MISSING)
            if attr is _MISSING:
                raise NotFound(f"{type(obj).__name__} has no attribute {name!r}")
            if msg["t"] == "get":
                if callable(attr) and not isinstance(attr, type):
                    conn.send({"t": "res", "id": rid, "m": 1})
                else:
                    conn.send({"t": "res", "id": rid, "v": attr})
                return
            result = attr(*msg.get("a", ()), **msg.get("k", {}))
            if isinstance(result, (types.GeneratorType, Iterator)) and not isinstance(result, (str, bytes)):
                self._stream(conn, rid, result)
                return
            conn.send({"t": "res", "id": rid, "v": result})
        except PyctrError as e:
            code = e.code
            conn.send({"t": "err", "id": rid, "c": e.code, "m": str(e)})
        except Exception as e:
            code = "internal"
            log.warning("request %s (%s) failed", rid, target_desc, exc_info=True)
            conn.send({"t": "err", "id": rid, "c": "internal", "m": f"{type(e).__name__}: {e}"})
        finally:
            self._end()
            if self.request_hook is not None:
                with contextlib.suppress(Exception):
                    self.request_hook(target_desc, time.perf_counter() - t0, code)

    def _stream(self, conn: _Conn, rid: Any, it: Iterator[Any]) -> None:
        stop = threading.Event()
        conn._streams[rid] = stop
        conn.send({"t": "stream", "id": rid})

        def pump() -> None:
            try:
                for item in it:
                    if stop.is_set() or conn.closed:
                        break
                    if item is KEEPALIVE:
                        continue
                    conn.send({"t": "item", "id": rid, "v": item})
                else:
                    conn.send({"t": "end", "id": rid})
            except PyctrError as e:
                conn.send({"t": "err", "id": rid, "c": e.code, "m": str(e)})
            except Exception as e:
                log.warning("stream %s failed", rid, exc_info=True)
                conn.send({"t": "err", "id": rid, "c": "internal", "m": f"{type(e).__name__}: {e}"})
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()
                conn._streams.pop(rid, None)

        threading.Thread(target=pump, name=f"stream-{conn.id}-{rid}", daemon=True).start()


_MISSING = object()

__all__ = ["Handle", "RPCServer", "RootService"]
