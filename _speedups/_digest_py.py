"""Pure-Python twin of :mod:`pyctr._speedups._digest_c`: SHA-256 with a byte count, a portable
checkpoint format, and a copy-and-hash loop.

The checkpoint (``Sha256.state()``) is shared by both implementations::

    b"PYSHA256" | version (1 byte, 1) | kind (1 byte) | count (u64 BE) | payload | crc32 (u32 BE)

* kind ``M`` (midstate, written by the compiled hasher): payload = the eight 32-bit chaining words
  (big-endian) followed by the ``count % 64`` bytes not yet compressed;
* kind ``C`` (count only, written by this twin, which cannot read hashlib's internal state): no payload.

:meth:`Sha256.from_state` raises :class:`ValueError` for a blob it cannot restore (corrupt, truncated,
wrong kind); callers then re-hash the data from the start, so a bad checkpoint never yields a wrong
digest.  This twin restores only the empty state; the compiled one restores ``M`` blobs.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

MAGIC = b"PYSHA256"
VERSION = 1
KIND_MIDSTATE = ord("M")
KIND_COUNT = ord("C")
_HEAD = struct.Struct(">8sBBQ")
BUFSIZE = 1 << 20


def pack_state(kind: int, count: int, payload: bytes = b"") -> bytes:
    """Build a checkpoint blob (see the module docstring)."""
    body = _HEAD.pack(MAGIC, VERSION, kind, count) + payload
    return body + struct.pack(">I", zlib.crc32(body))


def unpack_state(blob: bytes) -> tuple[int, int, bytes]:
    """Check a checkpoint blob and return ``(kind, count, payload)``; ValueError if it is not valid."""
    blob = bytes(blob)
    if len(blob) < _HEAD.size + 4:
        raise ValueError("hash state too short")
    body, (crc,) = blob[:-4], struct.unpack(">I", blob[-4:])
    if zlib.crc32(body) != crc:
        raise ValueError("hash state checksum mismatch")
    magic, version, kind, count = _HEAD.unpack_from(body)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a pyctr SHA-256 hash state")
    payload = body[_HEAD.size:]
    if kind == KIND_MIDSTATE:
        if len(payload) != 32 + count % 64:
            raise ValueError("hash state payload has the wrong length")
    elif kind == KIND_COUNT:
        if payload:
            raise ValueError("count-only hash state with a payload")
    else:
        raise ValueError(f"unknown hash state kind {kind!r}")
    return kind, count, payload


class Sha256:
    """SHA-256 that knows how many bytes it has hashed and can checkpoint itself."""

    __slots__ = ("_count", "_h")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._h = hashlib.sha256()
        self._count = 0
        if data:
            self.update(data)

    @property
    def count(self) -> int:
        """Bytes hashed so far."""
        return self._count

    def update(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        self._h.update(mv)
        self._count += mv.nbytes

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def copy(self) -> Sha256:
        other = Sha256.__new__(Sha256)
        other._h = self._h.copy()
        other._count = self._count
        return other

    def state(self) -> bytes:
        """A checkpoint: this twin records the byte count only (restorable when it is zero)."""
        return pack_state(KIND_COUNT, self._count)

    @classmethod
    def from_state(cls, blob: bytes) -> Sha256:
        """Restore a checkpoint; ValueError if it is invalid or this implementation cannot resume it."""
        _kind, count, _ = unpack_state(blob)
        if count:
            raise ValueError("the pure-Python hasher cannot resume a non-empty hash state; re-hash the data")
        return cls()


def copy_and_hash(src_fd: int, dst_fd: int, hasher: Sha256, limit: int = -1, bufsize: int = BUFSIZE) -> int:
    """Read ``src_fd`` until EOF (or ``limit`` bytes), write each chunk fully to ``dst_fd`` (unless it is
    -1) and hash it.  A chunk is hashed only once written, so on an OSError ``hasher.count`` still says
    how many bytes reached ``dst_fd`` through this hasher.  Returns the bytes copied."""
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    total = 0
    while limit < 0 or total < limit:
        want = bufsize if limit < 0 else min(bufsize, limit - total)
        n = os.readv(src_fd, [mv[:want]])
        if n == 0:
            break
        chunk = mv[:n]
        if dst_fd >= 0:
            done = 0
            while done < n:
                done += os.write(dst_fd, chunk[done:])
        hasher.update(chunk)
        total += n
    return total
