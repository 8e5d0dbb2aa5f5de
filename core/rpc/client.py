"""The client side of the RPC: a connection to ``pyctrd`` and proxies for the server's objects.

:class:`Connection` sends requests and matches responses by id on a reader thread, so one connection
serves several threads at once.  :class:`RemoteObject` stands for an object in the server: reading an
attribute asks the server (a method comes back as a callable proxy, a plain value as the value, any
other object as another remote object); calling it sends the call.  A result that the server streams
comes back as an iterator.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from ..errdefs import DeadlineExceeded, PyctrError, Unavailable, from_code
from . import PROTOCOL_VERSION
from .codec import decode_body, encode_frame, make_ext_hook, make_packer, read_frame

_END = object()
_METHOD = object()


class _Stream:
    def __init__(self, conn: Connection, rid: int) -> None:
        self.conn = conn
        self.rid = rid
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self.q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        if self.conn._streams.pop(self.rid, None) is not None:
            with contextlib.suppress(PyctrError, OSError):
                self.conn._send({"t": "cancel", "id": self.rid})


class Connection:
    def __init__(self, address: str, *, connect_timeout: float = 2.0) -> None:
        self.address = address
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(connect_timeout)
        try:
            s.connect(address)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            raise Unavailable(f"no pyctrd answers at {address} ({e.strerror}); start pyctrd, or drop "
                              "--address/PYCTR_ADDRESS to work without the daemon") from None
        except OSError as e:
            s.close()
            raise Unavailable(f"cannot connect to pyctrd at {address}: {e.strerror or e}") from None
        s.settimeout(None)
        self.sock = s
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.SimpleQueue[Any]] = {}
        self._streams: dict[int, _Stream] = {}
        self._wlock = threading.Lock()
        self._closed = False
        self.packer = make_packer(None)
        self.ext_hook = make_ext_hook(self._remote)
        self._send({"t": "hello", "v": PROTOCOL_VERSION})
        body = read_frame(self.sock)
        hello = decode_body(body, self.ext_hook) if body else None
        if not isinstance(hello, dict) or hello.get("t") != "hello":
            raise Unavailable(f"{address} did not answer like pyctrd")
        self.server = str(hello.get("server", ""))
        self._reader = threading.Thread(target=self._read_loop, name="pyctr-rpc-reader", daemon=True)
        self._reader.start()
        self.root = RemoteObject(self, 0)

    def _remote(self, hid: int) -> RemoteObject:
        return RemoteObject(self, hid)

    def _send(self, msg: dict[str, Any]) -> None:
        frame = encode_frame(self.packer, msg)
        with self._wlock:
            if self._closed:
                raise Unavailable("the connection to pyctrd is closed")
            try:
                self.sock.sendall(frame)
            except OSError as e:
                raise Unavailable(f"lost the connection to pyctrd: {e}") from None

    def _read_loop(self) -> None:
        err: BaseException = Unavailable("pyctrd closed the connection")
        try:
            while True:
                body = read_frame(self.sock)
                if body is None:
                    break
                msg = decode_body(body, self.ext_hook)
                rid = msg.get("id")
                kind = msg.get("t")
                st = self._streams.get(rid)
                if st is not None and kind in ("item", "end", "err"):
                    if kind == "item":
                        st.q.put(msg.get("v"))
                    elif kind == "end":
                        self._streams.pop(rid, None)
                        st.q.put(_END)
                    else:
                        self._streams.pop(rid, None)
                        st.q.put(from_code(msg.get("c", ""), msg.get("m", "")))
                    continue
                q = self._pending.pop(rid, None)
                if kind == "stream":  # the result is streamed: route the items that follow
                    st = _Stream(self, rid)
                    self._streams[rid] = st
                    if q is not None:
                        q.put(st)
                    continue
                if q is not None:
                    q.put(msg)
        except (OSError, ConnectionError, PyctrError) as e:
            err = Unavailable(f"lost the connection to pyctrd: {e}")
        finally:
            self._closed = True
            for q in list(self._pending.values()):
                q.put(err)
            self._pending.clear()
            for st in list(self._streams.values()):
                st.q.put(err)
            self._streams.clear()

    def request(self, kind: str, handle: int, name: str, args: tuple[Any, ...] = (),
                kwargs: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        rid = next(self._ids)
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending[rid] = q
        msg: dict[str, Any] = {"t": kind, "id": rid, "h": handle, "n": name}
        if kind == "call":
            msg["a"] = list(args)
            msg["k"] = kwargs or {}
        if timeout is not None:
            msg["dl"] = time.time_ns() + int(timeout * 1e9)
        try:
            self._send(msg)
            resp = q.get(timeout=timeout)
        except queue.Empty:
            self._pending.pop(rid, None)
            raise DeadlineExceeded(f"pyctrd did not answer {name} within {timeout:g}s") from None
        except BaseException:
            self._pending.pop(rid, None)
            raise
        if isinstance(resp, BaseException):
            raise resp
        if isinstance(resp, _Stream):
            return iter(resp)
        if resp.get("t") == "err":
            raise from_code(resp.get("c", ""), resp.get("m", ""))
        if resp.get("m"):
            return _METHOD
        return resp.get("v")

    def release(self, handle: int) -> None:
        if not self._closed and handle:
            with contextlib.suppress(PyctrError, OSError):
                self._send({"t": "rel", "h": [handle]})

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class RemoteMethod:
    """A method of a server object; calling it calls it in the server.  It keeps its object (and so
    the server's handle) alive."""

    __slots__ = ("_conn", "_handle", "_name", "_owner")

    def __init__(self, conn: Connection, handle: int, name: str, owner: Any) -> None:
        self._conn = conn
        self._handle = handle
        self._name = name
        self._owner = owner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn.request("call", self._handle, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of handle {self._handle}>"


class RemoteObject:
    """An object in the server.  Attribute reads go to the server (methods and objects are cached)."""

    def __init__(self, conn: Connection, handle: int) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "__pyctr_handle__", handle)
        if handle:
            weakref.finalize(self, conn.release, handle)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        cache: dict[str, Any] = object.__getattribute__(self, "_cache")
        if name in cache:
            return cache[name]
        v = self._conn.request("get", self._handle, name)
        if v is _METHOD:
            v = RemoteMethod(self._conn, self._handle, name, self)
        if isinstance(v, (RemoteMethod, RemoteObject)):
            cache[name] = v
        return v

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("remote objects are read-only")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._conn.request("call", self._handle, "iterate", (), {}))

    def __repr__(self) -> str:
        return f"<remote object {self._handle} at {self._conn.address}>"


def default_address(state: str | None = None) -> str:
    from ..config import DEFAULT_ADDRESS

    return os.path.join(state, "pyctr.sock") if state else DEFAULT_ADDRESS
