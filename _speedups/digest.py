"""SHA-256 for the content store: picks the compiled hasher (``_digest_c``, OpenSSL libcrypto) or the
pure-Python twin (``_digest_py``, hashlib).  ``PYCTR_NO_EXTENSIONS=1`` forces the twin.

API (both implementations):

* ``Sha256(data=b"")`` with ``update(buffer)`` (the compiled one releases the GIL for large buffers),
  ``digest()``, ``hexdigest()``, ``copy()``, ``count`` (bytes hashed), ``state() -> bytes`` (a
  checkpoint) and ``Sha256.from_state(bytes)`` (ValueError if the checkpoint is invalid or cannot be
  resumed by this implementation: callers re-hash the data instead);
* ``copy_and_hash(src_fd, dst_fd, hasher, limit=-1) -> int``: read until EOF or ``limit`` bytes, write
  each chunk to ``dst_fd`` (-1: hash only) and hash it.

:func:`resume` builds a hasher for the first ``offset`` bytes of a file from a checkpoint, falling back
to re-hashing whatever the checkpoint does not cover, so a corrupt or stale checkpoint never yields a
wrong digest (as long as the file's bytes are what was written).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from . import use_extensions

BufferLike = bytes | bytearray | memoryview


class Hasher(Protocol):
    """What both ``Sha256`` classes provide."""

    @property
    def count(self) -> int: ...

    def update(self, data: BufferLike) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...

    def state(self) -> bytes: ...


def _load() -> tuple[str, Any, Callable[..., int]]:
    if use_extensions():
        try:
            from . import _digest_c

            return "c", _digest_c.Sha256, _digest_c.copy_and_hash
        except ImportError:  # not compiled: fall back to the twin
            pass
    from . import _digest_py

    return "py", _digest_py.Sha256, _digest_py.copy_and_hash


#: ``"c"`` or ``"py"``: which implementation :data:`Sha256` and :func:`copy_and_hash` come from
IMPLEMENTATION: str
Sha256: Any
copy_and_hash: Callable[..., int]
IMPLEMENTATION, Sha256, copy_and_hash = _load()


def resume(fd: int, offset: int, state: bytes | None, impl: Any = None) -> tuple[Hasher, int]:
    """A hasher over the first ``offset`` bytes of the file open at ``fd``.

    Restores ``state`` if it is valid and covers at most ``offset`` bytes, then hashes the rest
    ``[count, offset)`` from the file; otherwise re-hashes ``[0, offset)``.  Returns the hasher and the
    number of bytes read from the file (0 when the checkpoint covered everything).  Uses ``pread``, so
    ``fd``'s position does not move.
    """
    cls = impl or Sha256
    h: Hasher | None = None
    if state:
        try:
            h = cls.from_state(state)
        except ValueError:
            h = None
        if h is not None and h.count > offset:
            h = None
    if h is None:
        h = cls()
    start = h.count
    pos = start
    while pos < offset:
        chunk = os.pread(fd, min(1 << 20, offset - pos), pos)
        if not chunk:
            raise OSError(f"file ends at {pos} bytes, expected {offset}")
        h.update(chunk)
        pos += len(chunk)
    return h, offset - start


__all__ = ["IMPLEMENTATION", "Hasher", "Sha256", "copy_and_hash", "resume"]
