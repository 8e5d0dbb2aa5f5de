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
from typing import TYPE_CHECKING, Protocol

from . import use_extensions

if TYPE_CHECKING:
    from collections.abc import Buffer


class Hasher(Protocol):
    @property
    def count(self) -> int: ...

    def update(self, data: Buffer) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...

    def state(self) -> bytes: ...


IMPLEMENTATION: str
if use_extensions():
    try:
        from ._digest_c import Sha256, copy_and_hash

        IMPLEMENTATION = "c"
    except ImportError:  # not compiled: fall back to the twin
        from ._digest_py import Sha256, copy_and_hash

        IMPLEMENTATION = "py"
else:
    from ._digest_py import Sha256, copy_and_hash

    IMPLEMENTATION = "py"


def resume(fd: int, offset: int, state: bytes | None, impl: type[Sha256] | None = None) -> tuple[Hasher, int]:
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
