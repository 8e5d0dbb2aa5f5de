"""The local content store: content-addressed blobs on the filesystem, containerd's layout.

::

    <root>/blobs/sha256/<hex>                     committed blobs, read-only (mode 0444)
    <root>/ingest/<sha256(ref)>/                  one ingest in progress, keyed by its ref
        ref total expected startedat              what the writer was opened with
        data                                      the bytes written so far
        hashstate                                 a checkpoint of the SHA-256 state (see below)
        lock                                      flock(2)ed by the one active writer

Guarantees:

* one writer per ref at a time, across threads and processes (``flock`` on ``lock``; a second writer
  gets :class:`~pyctr.errdefs.Conflict` at once);
* commit fsyncs the data, checks its size and digest, renames it into ``blobs/`` atomically and fsyncs
  the directory, so a reader never sees a partial blob; a size or digest mismatch
  (:class:`~pyctr.errdefs.DataLoss`), a malformed digest or an unsupported algorithm
  (:class:`~pyctr.errdefs.InvalidArgument`) removes the ingest and leaves no blob;
* a closed (not committed, not aborted) writer keeps its ingest; reopening the ref resumes at the
  written offset.  The hash state is checkpointed beside the data (on close, and every
  ``checkpoint_bytes`` written, after an fsync of the data), so resuming with the compiled hasher reads
  only what the checkpoint does not cover.  The checkpoint names the data file's inode and the hash of
  the last 4 KiB it covers; a corrupt checkpoint, or one that does not match the data, is ignored and
  the data re-hashed, so it never yields a wrong digest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import struct
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import IO, Any, BinaryIO

from pyctr._speedups import digest as _digest
from pyctr._speedups._digest_py import unpack_state
from pyctr.content import Info, Status, validate_digest
from pyctr.errdefs import (
    AlreadyExists,
    Conflict,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

_HEX = frozenset("0123456789abcdef")


def _is_hex64(name: str) -> bool:
    return len(name) == 64 and all(c in _HEX for c in name)


def _write_small(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_small(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return default


_CKPT_MAGIC = b"PYCTRCK1"
_CKPT_HEAD = struct.Struct(">8sQQI32s")  # magic, data inode, count, tail length, sha256(tail)
_CKPT_TAIL = 4096


def _make_checkpoint(fd: int, state: bytes, count: int) -> bytes:
    """The ``hashstate`` file: the hasher's state, bound to the data file it describes (its inode and
    a hash of the last bytes it covers), so a checkpoint that belongs to other bytes is never used."""
    tail_len = min(count, _CKPT_TAIL)
    tail = os.pread(fd, tail_len, count - tail_len)
    head = _CKPT_HEAD.pack(_CKPT_MAGIC, os.fstat(fd).st_ino, count, tail_len, hashlib.sha256(tail).digest())
    return head + state


def _load_checkpoint(path: Path, fd: int, size: int) -> bytes | None:
    """The hasher state from ``path`` if it is intact and matches the data file open at ``fd`` (at most
    ``size`` bytes long); otherwise None (the caller then re-hashes the data)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(blob) < _CKPT_HEAD.size:
        return None
    magic, ino, count, tail_len, tail_sum = _CKPT_HEAD.unpack_from(blob)
    state = blob[_CKPT_HEAD.size:]
    if magic != _CKPT_MAGIC or ino != os.fstat(fd).st_ino or count > size:
        return None
    if tail_len != min(count, _CKPT_TAIL):
        return None
    try:
        _kind, state_count, _ = unpack_state(state)
    except ValueError:
        return None
    if state_count != count or hashlib.sha256(os.pread(fd, tail_len, count - tail_len)).digest() != tail_sum:
        return None
    return state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """The backend :class:`~pyctr.content.ContentStore` (no namespaces, no labels)."""

    def __init__(self, root: str | os.PathLike[str], *, checkpoint_bytes: int = 64 << 20,
                 digest_impl: ModuleType | None = None) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest_root = self.root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.ingest_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.checkpoint_bytes = checkpoint_bytes
        #: the speedup module used for hashing (``Sha256``, ``copy_and_hash``); tests pass either twin
        self.impl: Any = digest_impl or _digest
        # ingests renamed away for removal by a process that died before deleting them
        for name in os.listdir(self.ingest_root):
            if name.startswith(".trash-"):
                shutil.rmtree(self.ingest_root / name, ignore_errors=True)

    # -- blobs -----------------------------------------------------------------------------------

    def path(self, digest: str) -> str:
        return str(self.blobs / validate_digest(digest).split(":", 1)[1])

    def info(self, digest: str) -> Info:
        try:
            st = os.stat(self.path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None
        return Info(digest=digest, size=st.st_size, created_at=st.st_mtime_ns, updated_at=st.st_mtime_ns)

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def read(self, digest: str, offset: int = 0, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all when -1) from ``offset``; fewer at the end of the blob."""
        if offset < 0:
            raise InvalidArgument(f"negative offset {offset}")
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None
        try:
            if size < 0:
                size = max(0, os.fstat(fd).st_size - offset)
            parts: list[bytes] = []
            while size > 0:
                chunk = os.pread(fd, min(size, 1 << 24), offset)
                if not chunk:
                    break
                parts.append(chunk)
                offset += len(chunk)
                size -= len(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None

    def walk(self) -> Iterator[Info]:
        try:
            entries = list(os.scandir(self.blobs))
        except FileNotFoundError:
            return
        for e in sorted(entries, key=lambda e: e.name):
            if not _is_hex64(e.name):
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                continue
            yield Info(digest=f"sha256:{e.name}", size=st.st_size, created_at=st.st_mtime_ns,
                       updated_at=st.st_mtime_ns)

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest} not found") from None

    # -- ingests ---------------------------------------------------------------------------------

    def ingest_dir(self, ref: str) -> Path:
        if not ref:
            raise InvalidArgument("an ingest ref must not be empty")
        return self.ingest_root / hashlib.sha256(ref.encode()).hexdigest()

    def _lock(self, ref: str, create: bool) -> tuple[Path, int]:
        """Take the ref's lock (non-blocking).  Conflict when another writer holds it; NotFound when the
        ingest does not exist and ``create`` is false."""
        d = self.ingest_dir(ref)
        for _ in range(20):
            if create:
                d.mkdir(exist_ok=True, mode=0o700)
            lock_path = d / "lock"
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                if not create:
                    raise NotFound(f"no ingest with ref {ref!r}") from None
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise Conflict(f"ref {ref!r} is locked: another writer is active on it") from None
                raise
            # The ingest may have been committed or aborted (its directory renamed away) between our
            # open and our lock: then the path no longer names the inode we locked.
            fst = os.fstat(fd)
            try:
                st = os.stat(lock_path)
                same = (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                return d, fd
            os.close(fd)
            if not create:
                raise NotFound(f"no ingest with ref {ref!r}")
        raise Conflict(f"ref {ref!r} keeps changing under us; retry")

    def _remove_ingest(self, d: Path) -> None:
        """Rename the ingest away (atomically, while the caller holds its lock), then delete it."""
        trash = self.ingest_root / f".trash-{uuid.uuid4().hex}"
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _status_of(self, d: Path) -> Status | None:
        ref = _read_small(d / "ref")
        if not ref:
            return None
        try:
            st = os.stat(d / "data")
            offset, updated = st.st_size, st.st_mtime_ns
        except FileNotFoundError:
            offset, updated = 0, 0
        started = int(_read_small(d / "startedat", "0") or 0)
        return Status(ref=ref, offset=offset, total=int(_read_small(d / "total", "-1") or -1),
                      expected=_read_small(d / "expected"), started_at=started, updated_at=updated or started)

    def status(self, ref: str) -> Status:
        st = self._status_of(self.ingest_dir(ref))
        if st is None or st.ref != ref:
            raise NotFound(f"no ingest with ref {ref!r}")
        return st

    def list_statuses(self, prefix: str = "") -> list[Status]:
        """Every ingest in progress (whose ref starts with ``prefix``), by ref."""
        out: list[Status] = []
        try:
            names = os.listdir(self.ingest_root)
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith("."):
                continue
            st = self._status_of(self.ingest_root / name)
            if st is not None and st.ref.startswith(prefix):
                out.append(st)
        return sorted(out, key=lambda s: s.ref)

    def is_active(self, ref: str) -> bool:
        """Whether a writer currently holds the ref's lock."""
        try:
            fd = os.open(self.ingest_dir(ref) / "lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    def abort(self, ref: str) -> None:
        """Remove an ingest (NotFound if there is none, Conflict if a writer is active on it)."""
        d, lock = self._lock(ref, create=False)
        try:
            if not (d / "ref").exists() and not (d / "data").exists():
                self._remove_ingest(d)
                raise NotFound(f"no ingest with ref {ref!r}")
            self._remove_ingest(d)
        finally:
            os.close(lock)

    def writer(self, ref: str, total: int = -1, expected: str = "") -> LocalWriter:
        """Open (or resume) the ingest ``ref``.

        :raises InvalidArgument: empty ref, malformed ``expected`` or unsupported algorithm, bad total.
        :raises AlreadyExists: ``expected`` is already a committed blob.
        :raises Conflict: another writer holds the ref.
        :raises FailedPrecondition: resuming with a different ``total`` or ``expected``.
        """
        if expected:
            validate_digest(expected)
            if self.exists(expected):
                raise AlreadyExists(f"content {expected} already exists")
        if total < -1:
            raise InvalidArgument(f"invalid total size {total}")
        d, lock = self._lock(ref, create=True)
        created = not (d / "ref").exists()
        fd = rfd = -1
        try:
            if created:
                started = time.time_ns()
                _write_small(d / "total", str(total))
                _write_small(d / "expected", expected)
                _write_small(d / "startedat", str(started))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(d / "hashstate")
                fd = os.open(d / "data", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                _write_small(d / "ref", ref)
                hasher = self.impl.Sha256()
                reread = 0
            else:
                if _read_small(d / "ref") != ref:
                    raise FailedPrecondition(f"ingest directory {d} belongs to another ref")
                have_total = int(_read_small(d / "total", "-1") or -1)
                have_expected = _read_small(d / "expected")
                if total >= 0 and have_total >= 0 and total != have_total:
                    raise FailedPrecondition(
                        f"ref {ref!r} is being ingested with total {have_total}, not {total}; abort it first")
                if expected and have_expected and expected != have_expected:
                    raise FailedPrecondition(
                        f"ref {ref!r} is being ingested as {have_expected}, not {expected}; abort it first")
                if total >= 0 and have_total < 0:
                    _write_small(d / "total", str(total))
                    have_total = total
                if expected and not have_expected:
                    _write_small(d / "expected", expected)
                    have_expected = expected
                total, expected = have_total, have_expected
                started = int(_read_small(d / "startedat", "0") or 0)
                fd = os.open(d / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                size = os.fstat(fd).st_size
                rfd = os.open(d / "data", os.O_RDONLY | os.O_CLOEXEC)
                state = _load_checkpoint(d / "hashstate", rfd, size)
                hasher, reread = _digest.resume(rfd, size, state, self.impl.Sha256)
                os.lseek(fd, size, os.SEEK_SET)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if created:
                self._remove_ingest(d)
            os.close(lock)
            raise
        finally:
            if rfd >= 0:
                os.close(rfd)
        return LocalWriter(self, ref, d, lock, fd, hasher, total, expected, started, reread)


class LocalWriter:
    """An open ingest (see :class:`pyctr.content.Writer`).  Not thread-safe: one user at a time."""

    def __init__(self, store: LocalStore, ref: str, d: Path, lock: int, fd: int, hasher: Any, total: int,
                 expected: str, started_at: int, reread: int) -> None:
        self.store = store
        self.ref = ref
        self.dir = d
        self._lock = lock
        self._fd = fd
        self._h = hasher
        self.total = total
        self.expected = expected
        self.started_at = started_at
        #: bytes of the data file re-read to rebuild the hash state when this writer was opened
        self.rehashed = reread
        self._since_checkpoint = 0
        self._closed = False

    # -- writing ---------------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        return int(self._h.count)

    def _check(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"writer for ref {self.ref!r} is closed")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check()
        mv = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(mv):
                done += os.write(self._fd, mv[done:])
        except OSError:
            self._repair()
            raise
        self._h.update(mv)
        self._after_write(len(mv))
        return len(mv)

    def copy_from(self, src: int | IO[bytes], limit: int = -1) -> int:
        """Append everything read from ``src`` (a file descriptor or binary file), or ``limit`` bytes,
        hashing as it goes (the compiled loop runs without the GIL).  Returns the bytes copied."""
        self._check()
        src_fd = src if isinstance(src, int) else src.fileno()
        copied = 0
        while limit < 0 or copied < limit:
            step = self.store.checkpoint_bytes - self._since_checkpoint
            if limit >= 0:
                step = min(step, limit - copied)
            try:
                n = int(self.store.impl.copy_and_hash(src_fd, self._fd, self._h, step))
            except OSError:
                self._repair()
                raise
            copied += n
            self._after_write(n)
            if n < step:
                break
        return copied

    def _repair(self) -> None:
        # After a failed write the file may hold bytes the hasher has not seen: cut them off.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self.offset)
            os.lseek(self._fd, self.offset, os.SEEK_SET)

    def _after_write(self, n: int) -> None:
        self._since_checkpoint += n
        if self._since_checkpoint >= self.store.checkpoint_bytes:
            self.checkpoint()

    def checkpoint(self) -> None:
        """fsync the data, then save the hash state beside it (atomically)."""
        self._check()
        os.fsync(self._fd)
        tmp = self.dir / f".hashstate.{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(_make_checkpoint(self._fd, self._h.state(), self.offset))
        os.replace(tmp, self.dir / "hashstate")
        self._since_checkpoint = 0

    def digest(self) -> str:
        return f"sha256:{self._h.hexdigest()}"

    def truncate(self, size: int) -> None:
        """Cut the ingest to ``size`` bytes (at most the current offset) and rebuild the hash state."""
        self._check()
        if size < 0 or size > self.offset:
            raise InvalidArgument(f"cannot truncate ingest {self.ref!r} at {self.offset} bytes to {size}")
        os.ftruncate(self._fd, size)
        os.lseek(self._fd, size, os.SEEK_SET)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / "hashstate")
        rfd = os.open(self.dir / "data", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._h, _ = _digest.resume(rfd, size, None, self.store.impl.Sha256)
        finally:
            os.close(rfd)
        self._since_checkpoint = 0

    def status(self) -> Status:
        try:
            updated = os.fstat(self._fd).st_mtime_ns if not self._closed else self.started_at
        except OSError:
            updated = self.started_at
        return Status(ref=self.ref, offset=self.offset, total=self.total, expected=self.expected,
                      started_at=self.started_at, updated_at=updated)

    # -- finishing -------------------------------------------------------------------------------

    def commit(self, size: int = -1, expected: str = "", labels: Mapping[str, str] | None = None) -> Info:
        """Verify and publish the blob.  ``size``/``expected`` default to what the writer was opened
        with; a size is checked when > 0 (containerd's rule).  Always closes the writer.

        :raises DataLoss: size or digest mismatch (the ingest is removed).
        :raises InvalidArgument: malformed expected digest or unsupported algorithm (ingest removed).
        :raises AlreadyExists: the blob is already committed (after verification; ingest removed).
        """
        self._check()
        store = self.store
        remove = True
        renamed = False
        try:
            os.fsync(self._fd)
            actual = os.fstat(self._fd).st_size
            if actual != self.offset:
                raise DataLoss(
                    f"ingest {self.ref!r} has {actual} bytes on disk but {self.offset} were written")
            want_size = size if size > 0 else self.total
            if want_size > 0 and actual != want_size:
                raise DataLoss(
                    f"size mismatch for ref {self.ref!r}: wrote {actual} bytes, expected {want_size}")
            want = expected or self.expected
            if want:
                validate_digest(want)
            dgst = self.digest()
            if want and dgst != want:
                raise DataLoss(f"digest mismatch for ref {self.ref!r}: content is {dgst}, expected {want}")
            target = store.blobs / dgst.split(":", 1)[1]
            if target.exists():
                raise AlreadyExists(f"content {dgst} already exists")
            now = time.time_ns()
            os.fchmod(self._fd, 0o444)
            os.utime(self._fd, ns=(now, now))
            os.rename(self.dir / "data", target)
            renamed = True
            _fsync_dir(store.blobs)
            return Info(digest=dgst, size=actual, created_at=now, updated_at=now, labels=dict(labels or {}))
        except OSError:
            # an I/O error before the rename keeps the ingest for a retry; a verification failure
            # (DataLoss, InvalidArgument, AlreadyExists) removes it
            remove = renamed
            raise
        finally:
            self._release(remove=remove)

    def close(self) -> None:
        """Checkpoint and release the ingest, keeping it for a later resume."""
        if self._closed:
            return
        with contextlib.suppress(OSError):  # the next writer re-hashes what a checkpoint lacks
            self.checkpoint()
        self._release(remove=False)

    def abort(self) -> None:
        """Remove the ingest and release the writer."""
        if self._closed:
            raise FailedPrecondition(f"writer for ref {self.ref!r} is closed")
        self._release(remove=True)

    def _release(self, remove: bool) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self._fd)
        try:
            if remove:
                self.store._remove_ingest(self.dir)
        finally:
            os.close(self._lock)

    def __enter__(self) -> LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self._release(remove=False)
