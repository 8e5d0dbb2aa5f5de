"""Client side of the shim RPC: 4-byte big-endian length + msgpack ``{id, method, params}`` frames.

File descriptors travel with a request as SCM_RIGHTS (``params["fds"]`` says how many).  Errors come
back as ``{code, message}`` and are raised as the matching :mod:`pyctr.errdefs` class.
"""

from __future__ import annotations

import array
import itertools
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

import msgpack
from pyctr.errdefs import DeadlineExceeded, PyctrError, Unavailable, from_code
from pyctr.runtime import CommandNotFound

_HDR = struct.Struct(">I")


class ShimGone(Unavailable):
    """The shim closed the connection or cannot be reached (it is probably dead)."""


class ShimFull(Unavailable):
    """The shim refused a create: it already supervises its ``max_tasks`` live tasks (a full pool)."""

    code = "resource_exhausted"


def error_from(code: str, message: str) -> PyctrError:
    if code == CommandNotFound.code:
        return CommandNotFound(message)
    if code == ShimFull.code:
        return ShimFull(message)
    return from_code(code, message)


class ShimClient:
    """Calls to one shim (thread-safe): a kept connection, plus short-lived ones for concurrent calls."""

    def __init__(self, address: str, timeout: float = 60.0) -> None:
        self.address = address
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False  # after close(), calls still work, each on a connection of its own

    def _connect(self, timeout: float | None) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(timeout)
        try:
            s.connect(self.address)
        except OSError as e:
            s.close()
            raise ShimGone(f"shim at {self.address} is not reachable: {e.strerror or e}") from None
        return s

    def ping(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """``connect`` result, or None when no shim answers at the address."""
        try:
            res = self.call("connect", {}, timeout=timeout)
        except (Unavailable, DeadlineExceeded):
            return None
        return dict(res)

    def call(self, method: str, params: dict[str, Any], fds: Sequence[int] = (),
             timeout: float | None = -1.0, dedicated: bool = False) -> Any:
        """Send one request and return its result.

        ``timeout`` (seconds, None: forever; default: the client's) bounds the whole call.  With
        ``dedicated`` the call uses a connection of its own (for a long ``wait``).
        """
        t = self.timeout if timeout is not None and timeout < 0 else timeout
        if fds:
            params = {**params, "fds": len(fds)}
        # the kept connection when it is free; else one of the call's own (the shim serves
        # connections side by side: a create waiting for runc does not hold up the others)
        if dedicated or self._closed or not self._lock.acquire(blocking=False):
            s = self._connect(t)
            try:
                return self._roundtrip(s, method, params, fds, t)
            finally:
                s.close()
        try:
            if self._closed:
                return self.call(method, params, fds, timeout, dedicated=True)
            if self._sock is None:
                self._sock = self._connect(t)
            try:
                self._sock.settimeout(t)
                return self._roundtrip(self._sock, method, params, fds, t)
            except (ShimGone, DeadlineExceeded):
                self._close_locked()
                raise
        finally:
            self._lock.release()

    def _roundtrip(self, s: socket.socket, method: str, params: dict[str, Any], fds: Sequence[int],
                   timeout: float | None) -> Any:
        rid = next(self._ids)
        data = msgpack.packb({"id": rid, "method": method, "params": params})
        frame = _HDR.pack(len(data)) + data
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                sent = s.sendmsg([frame], anc)
                if sent < len(frame):
                    s.sendall(frame[sent:])
            else:
                s.sendall(frame)
            while True:
                reply = msgpack.unpackb(self._read_frame(s))
                if reply.get("id") == rid:
                    break
        except TimeoutError:
            raise DeadlineExceeded(f"shim {method} did not answer within {timeout:g} s") from None
        except (ConnectionError, BrokenPipeError, EOFError) as e:
            raise ShimGone(f"shim at {self.address} went away during {method}: {e or 'EOF'}") from None
        except OSError as e:
            raise ShimGone(f"shim at {self.address}: {method}: {e.strerror or e}") from None
        err = reply.get("error")
        if err:
            raise error_from(str(err.get("code", "unknown")), str(err.get("message", "")))
        return reply.get("result")

    @staticmethod
    def _read_exact(s: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return bytes(buf)

    def _read_frame(self, s: socket.socket) -> bytes:
        (n,) = _HDR.unpack(self._read_exact(s, 4))
        return self._read_exact(s, n)

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close_locked()
