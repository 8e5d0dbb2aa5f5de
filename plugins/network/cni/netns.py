"""Network namespaces kept alive by a bind mount, as ``ip netns add`` makes them.

:func:`create` makes a new network namespace in a short-lived thread (``unshare(CLONE_NEWNET)`` moves
only the calling thread), brings its ``lo`` up and bind-mounts ``/proc/self/task/<tid>/ns/net`` onto a
file; the namespace then lives as long as that mount (or a process inside it).  :func:`remove`
unmounts and unlinks the file.  No process is forked.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from typing import Any

from pyctr.errdefs import AlreadyExists, Internal, PermissionDenied, PyctrError
from pyctr.mount import is_mountpoint, unmount

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)  # libc is already loaded; find_library would run ldconfig
        lib.unshare.argtypes = [ctypes.c_int]
        lib.unshare.restype = ctypes.c_int
        cp = ctypes.c_char_p
        lib.mount.argtypes = [cp, cp, cp, ctypes.c_ulong, cp]
        lib.mount.restype = ctypes.c_int
        _libc = lib
    return _libc


def _raise(what: str, err: int) -> None:
    msg = f"{what}: {os.strerror(err)}"
    if err in (errno.EPERM, errno.EACCES):
        raise PermissionDenied(msg + " (creating network namespaces needs root)")
    raise Internal(msg)


def _loopback_up() -> None:
    """Set ``lo`` up in the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def create(path: str) -> str:
    """A new network namespace pinned at ``path`` (which must not exist), with ``lo`` up."""
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    except FileExistsError:
        raise AlreadyExists(f"network namespace file {path} already exists") from None
    failure: list[BaseException] = []

    def work() -> None:
        try:
            lib = _lib()
            if lib.unshare(CLONE_NEWNET) != 0:
                _raise("unshare(CLONE_NEWNET)", ctypes.get_errno())
            _loopback_up()
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if lib.mount(src, path.encode(), None, MS_BIND, None) != 0:
                _raise(f"bind mount of a network namespace at {path}", ctypes.get_errno())
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=work, name="pyctr-netns", daemon=True)
    t.start()
    t.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        e = failure[0]
        if isinstance(e, PyctrError):
            raise e
        raise Internal(f"cannot create a network namespace at {path}: {e}")
    return path


def exists(path: str) -> bool:
    """``path`` is a mounted network namespace file."""
    return os.path.exists(path) and is_mountpoint(path)


def remove(path: str) -> None:
    """Unmount and unlink a namespace file; nothing there is not an error."""
    if not path:
        return
    unmount(path, lazy=True, retries=5)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


__all__ = ["create", "exists", "remove"]
