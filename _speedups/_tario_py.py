"""Pure-Python twin of :mod:`pyctr._speedups._tario_c`: the tar parser and the safe extractor.

``extract(next_chunk, root, *, whiteouts, parents, same_owner) -> int`` reads an uncompressed tar
stream from ``next_chunk()`` (``b""`` at the end) and applies it onto ``root``; it returns the number
of entries applied.  See :mod:`pyctr._speedups.tario` for the public API.

Safety: the root is opened once (``O_PATH``) and every operation is relative to a directory fd
resolved inside it, with ``openat2(RESOLVE_IN_ROOT)`` where the kernel has it and an
``O_PATH|O_NOFOLLOW`` component walk (symlinks resolved by hand, clamped to the root) where it does
not.  The last component is always handled with ``*at`` calls that do not follow symlinks; modes,
owners and times are set on an fd (``fchmod``/``fchown``/``futimens``), with ``fchownat`` /
``utimensat(AT_SYMLINK_NOFOLLOW)`` for links and devices, and never by a host path.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Callable, Sequence

from pyctr.errdefs import (
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PyctrError,
)

BLOCK = 512
MAX_META = 1 << 20  # largest PAX / GNU long-name record accepted
MAX_SPARSE = 1 << 16  # most segments of one sparse file (old GNU format; PAX maps fit in MAX_META)
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "unchanged" to chown
MAX_SYMLINKS = 40
TIME_MAX = (1 << 63) - 1  # ns; wilder times are clamped
CACHE_MAX = 256
OPAQUE_XATTR = "trusted.overlay.opaque"
WH_PREFIX = b".wh."
WH_OPAQUE = b".wh..wh..opq"
WH_META = b".wh..wh."

O_PATH = os.O_PATH
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
SYS_openat2 = 437  # x86_64 and aarch64 (generic table)

REGULAR = frozenset((b"0", b"7", b"\0"))
FORCE_FALLBACK = bool(os.environ.get("PYCTR_TARIO_NO_OPENAT2"))  # tests exercise the O_PATH walk

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_ok = not FORCE_FALLBACK


def use_openat2(enabled: bool) -> bool:
    """Use ``openat2`` (True) or the ``O_PATH`` walk (False) from now on; returns the old setting."""
    global _openat2_ok
    old, _openat2_ok = _openat2_ok, enabled
    return old


def _openat2(dirfd: int, path: bytes, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    while True:
        fd = _syscall(ctypes.c_long(SYS_openat2), ctypes.c_int(dirfd), ctypes.c_char_p(path),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        e = ctypes.get_errno()
        if e in (errno.EAGAIN, errno.EINTR):  # a rename raced the lookup: retry
            continue
        raise OSError(e, os.strerror(e), path)


# ---------------------------------------------------------------------------------------------------
# the stream


class _Stream:
    """A byte stream over the pipeline's chunks."""

    def __init__(self, next_chunk: Callable[[], bytes]) -> None:
        self._next = next_chunk
        self._buf = memoryview(b"")
        self._pos = 0

    def _fill(self) -> bool:
        chunk = self._next()
        if not chunk:
            return False
        self._buf = memoryview(chunk)
        self._pos = 0
        return True

    def read(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes; DataLoss if the stream ends first."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            out = self._buf[self._pos : self._pos + n].tobytes()
            self._pos += n
            return out
        parts = [self._buf[self._pos :].tobytes()]
        need = n - avail
        self._pos = len(self._buf)
        while need:
            if not self._fill():
                raise DataLoss(f"layer is truncated (in {what})")
            take = min(need, len(self._buf))
            parts.append(self._buf[:take].tobytes())
            self._pos = take
            need -= take
        return b"".join(parts)

    def header(self) -> bytes | None:
        """The next 512-byte block, or None at a clean end of stream."""
        if self._pos == len(self._buf) and not self._fill():
            return None
        return self.read(BLOCK, "a tar header")

    def copy(self, fd: int, n: int, what: str) -> None:
        """Write the next ``n`` bytes to ``fd`` (at its current offset); -1 skips them."""
        while n:
            if self._pos == len(self._buf) and not self._fill():
                raise DataLoss(f"layer is truncated (in {what})")
            take = min(n, len(self._buf) - self._pos)
            if fd >= 0:
                view = self._buf[self._pos : self._pos + take]
                while view:
                    view = view[os.write(fd, view) :]
            self._pos += take
            n -= take

    def skip(self, n: int, what: str) -> None:
        self.copy(-1, n, what)


# ---------------------------------------------------------------------------------------------------
# headers


def _num(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU): big-endian two's complement
        value = int.from_bytes(field, "big", signed=False)
        if field[0] == 0xFF:
            return value - (1 << (8 * len(field)))
        return value & ~(0x80 << (8 * (len(field) - 1)))
    s = field.split(b"\0", 1)[0].strip(b" \0")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise DataLoss(f"layer has an invalid tar header ({what} field {field!r})") from None


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


class Header:
    """One tar entry after its PAX and GNU extension records are folded in."""

    __slots__ = ("atime", "data_size", "devmajor", "devminor", "gid", "linkname", "mode", "mtime",
                 "name", "realsize", "sparse", "type", "uid", "xattrs")

    def __init__(self) -> None:
        self.name = b""
        self.linkname = b""
        self.type = b"0"
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.data_size = 0  # bytes stored in the archive for this entry
        self.mtime = 0  # ns
        self.atime: int | None = None
        self.devmajor = 0
        self.devminor = 0
        self.xattrs: list[tuple[str, bytes]] = []
        self.sparse: list[tuple[int, int]] | None = None  # (offset, length) data segments
        self.realsize = 0


def _checksum_ok(block: bytes) -> bool:
    want = _num(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    if want == unsigned:
        return True
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    return want == signed


def _pax_records(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding at the end
            break
        sp = data.find(b" ", pos)
        if sp < 0:
            raise DataLoss("layer has a malformed PAX header")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise DataLoss("layer has a malformed PAX header") from None
        rec = data[sp + 1 : pos + length]
        if length <= sp - pos or pos + length > len(data) or not rec.endswith(b"\n") or b"=" not in rec:
            raise DataLoss("layer has a malformed PAX header")
        k, v = rec[:-1].split(b"=", 1)
        out.append((k, v))
        pos += length
    return out


def _pax_int(v: bytes, key: bytes) -> int:
    try:
        return int(v)
    except ValueError:
        raise DataLoss(f"layer has an invalid PAX {key.decode(errors='replace')} value {v!r}") from None


def _pax_time(v: bytes) -> int:
    try:
        s = v.decode("ascii")
        neg = s.startswith("-")
        whole, _, frac = s.lstrip("-").partition(".")
        ns = int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
        return -ns if neg else ns
    except ValueError:
        raise DataLoss(f"layer has an invalid PAX time {v!r}") from None


def _sparse_pairs(nums: list[int]) -> list[tuple[int, int]]:
    if len(nums) % 2:
        raise DataLoss("layer has a malformed sparse map")
    return [(nums[i], nums[i + 1]) for i in range(0, len(nums), 2)]


def _old_gnu_sparse(area: bytes, count: int) -> list[tuple[int, int]]:
    out = []
    for i in range(count):
        off = _num(area[i * 24 : i * 24 + 12], "sparse offset")
        n = _num(area[i * 24 + 12 : i * 24 + 24], "sparse length")
        if off == 0 and n == 0 and not area[i * 24 : i * 24 + 24].strip(b"\0"):
            break
        out.append((off, n))
    return out


def read_header(stream: _Stream) -> Header | None:
    """The next entry (extension records applied), or None at the end of the archive."""
    pax: list[tuple[bytes, bytes]] = []
    longname: bytes | None = None
    longlink: bytes | None = None
    while True:
        block = stream.header()
        if block is None:
            if pax or longname is not None or longlink is not None:
                raise DataLoss("layer is truncated (after an extension header)")
            return None
        if block.count(0) == BLOCK:
            return None  # end-of-archive marker
        if not _checksum_ok(block):
            raise DataLoss("layer has a tar header with a bad checksum (corrupt or not a tar)")
        typ = block[156:157]
        size = _num(block[124:136], "size")
        if size < 0:
            raise DataLoss("layer has a negative entry size")
        if typ in (b"x", b"g", b"L", b"K"):
            if size > MAX_META:
                raise InvalidArgument(f"layer has an extension header of {size} bytes (limit {MAX_META})")
            data = stream.read(size, "an extension header")
            stream.skip(-size % BLOCK, "an extension header")
            if typ == b"x":
                pax.extend(_pax_records(data))
            elif typ == b"L":
                longname = _cstr(data)
            elif typ == b"K":
                longlink = _cstr(data)
            continue  # 'g' global headers are ignored, as containerd does
        break

    h = Header()
    magic = block[257:263]
    name = _cstr(block[0:100])
    if magic == b"ustar\0":
        prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    h.name = longname if longname is not None else name
    h.linkname = longlink if longlink is not None else _cstr(block[157:257])
    h.type = typ
    h.mode = _num(block[100:108], "mode") & 0o7777
    h.uid = _num(block[108:116], "uid")
    h.gid = _num(block[116:124], "gid")
    h.data_size = size
    h.mtime = _num(block[136:148], "mtime") * 1_000_000_000
    if typ in (b"3", b"4"):
        h.devmajor = _num(block[329:337], "devmajor")
        h.devminor = _num(block[337:345], "devminor")
    if typ == b"\0" and h.name.endswith(b"/"):
        h.type = b"5"
    return _finish_header(h, block, pax, stream)


def _finish_header(h: Header, block: bytes, pax: list[tuple[bytes, bytes]], stream: _Stream) -> Header:
    """Fold in an old GNU sparse map and the PAX records (shared with the compiled parser)."""
    if block[156:157] == b"S":  # old GNU sparse: map in the header, continued in extension blocks
        h.type = b"0"
        segs = _old_gnu_sparse(block[386:482], 4)
        ext = block[482]
        while ext:
            if len(segs) > MAX_SPARSE:
                raise InvalidArgument(f"layer has a sparse file with more than {MAX_SPARSE} segments")
            eb = stream.read(BLOCK, "a sparse header")
            segs.extend(_old_gnu_sparse(eb[0:504], 21))
            ext = eb[504]
        h.sparse = segs
        h.realsize = _num(block[483:495], "sparse size")

    sp_offsets: list[int] = []
    sp_major = sp_minor = -1
    sp_map: list[int] | None = None
    sp_name: bytes | None = None
    sp_size: int | None = None
    for k, v in pax:
        if k == b"path":
            h.name = v
        elif k == b"linkpath":
            h.linkname = v
        elif k == b"size":
            h.data_size = _pax_int(v, k)
        elif k == b"uid":
            h.uid = _pax_int(v, k)
        elif k == b"gid":
            h.gid = _pax_int(v, k)
        elif k == b"mtime":
            h.mtime = _pax_time(v)
        elif k == b"atime":
            h.atime = _pax_time(v)
        elif k.startswith(b"SCHILY.xattr."):
            h.xattrs.append((k[13:].decode("utf-8", "surrogateescape"), v))
        elif k.startswith(b"GNU.sparse."):
            sub = k[11:]
            if sub in (b"offset", b"numbytes"):
                sp_offsets.append(_pax_int(v, k))
            elif sub == b"map":
                sp_map = [_pax_int(x, k) for x in v.split(b",")] if v else []
            elif sub == b"major":
                sp_major = _pax_int(v, k)
            elif sub == b"minor":
                sp_minor = _pax_int(v, k)
            elif sub == b"name":
                sp_name = v
            elif sub in (b"size", b"realsize"):
                sp_size = _pax_int(v, k)
    if h.data_size < 0:
        raise DataLoss("layer has a negative entry size")
    if b"\0" in h.name or b"\0" in h.linkname:
        raise InvalidArgument("layer has a PAX path or link path holding a NUL byte")
    h.mtime = max(-TIME_MAX, min(TIME_MAX, h.mtime))
    if h.atime is not None:
        h.atime = max(-TIME_MAX, min(TIME_MAX, h.atime))
    if sp_size is not None or sp_major >= 0 or sp_map is not None or sp_offsets:
        if sp_name is not None:
            h.name = sp_name
        h.realsize = sp_size if sp_size is not None else h.data_size
        if sp_major == 1 and sp_minor == 0:  # PAX 1.0: the map leads the data, in decimal lines
            h.sparse = _read_sparse_10(stream, h)
        elif sp_map is not None:  # PAX 0.1
            h.sparse = _sparse_pairs(sp_map)
        else:  # PAX 0.0
            h.sparse = _sparse_pairs(sp_offsets)
    return h


def _read_sparse_10(stream: _Stream, h: Header) -> list[tuple[int, int]]:
    buf = b""
    consumed = 0
    nums: list[int] = []
    want = -1
    while want < 0 or len(nums) < want:
        while b"\n" not in buf:
            if consumed + BLOCK > h.data_size or consumed + BLOCK > MAX_META:
                raise DataLoss("layer has a malformed sparse map")
            buf += stream.read(BLOCK, "a sparse map")
            consumed += BLOCK
        line, buf = buf.split(b"\n", 1)
        n = _pax_int(line, b"GNU.sparse map")
        if want < 0:
            want = 2 * n
        else:
            nums.append(n)
    h.data_size -= consumed
    return _sparse_pairs(nums)


# ---------------------------------------------------------------------------------------------------
# paths


def clean(name: bytes) -> list[bytes]:
    """The components of ``name`` made relative to the root: ``.``, empty and leading ``/`` dropped,
    ``..`` applied lexically and clamped at the root (as Go's ``filepath.Join("/", name)``)."""
    out: list[bytes] = []
    for part in name.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def _fail(e: OSError, name: bytes) -> PyctrError:
    """The error to raise for a system call that failed while applying entry ``name``."""
    what = f"applying layer entry {name.decode('utf-8', 'replace')!r}: {e.strerror}"
    if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EISDIR, errno.ENAMETOOLONG):
        return InvalidArgument(what)
    if e.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
        return PermissionDenied(what)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return FailedPrecondition(what + " (free some space and retry)")
    return Internal(what)


class _Extractor:
    def __init__(self, root: str, whiteouts: str, parents: Sequence[str], same_owner: bool) -> None:
        try:
            self.rootfd = os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"cannot apply a layer onto {root}: it does not exist") from None
        except NotADirectoryError:
            raise InvalidArgument(f"cannot apply a layer onto {root}: not a directory") from None
        st = os.fstat(self.rootfd)
        self.root_id = (st.st_dev, st.st_ino)
        self.overlay = whiteouts == "overlay"
        self.parents: list[int] = []
        self.same_owner = same_owner
        self.cache: dict[bytes, int] = {}
        self.stale: list[int] = []
        self.tracked: set[bytes] = set()  # parents whose ancestors are in ``unpacked``
        self.unpacked: set[tuple[int, int]] = set()  # inodes of this layer's entries and their parents
        self.dirtimes: list[tuple[list[bytes], int, int]] = []
        try:
            for p in parents:
                self.parents.append(os.open(p, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as e:
            self.close()
            raise NotFound(f"lower layer {p} cannot be opened: {e.strerror}") from None

    def close(self) -> None:
        self._drop_cache()
        self._close_stale()
        for fd in self.parents:
            os.close(fd)
        os.close(self.rootfd)

    def _drop_cache(self) -> None:
        """Forget resolved directories (after a removal); their fds close at the next entry, since
        the current one may still be using one."""
        self.stale.extend(self.cache.values())
        self.cache.clear()
        self.tracked.clear()

    def _close_stale(self) -> None:
        for fd in self.stale:
            os.close(fd)
        self.stale.clear()

    # -- resolution ----------------------------------------------------------------------------
    def dirfd(self, parts: list[bytes], create: bool) -> int:
        """An ``O_PATH`` fd of the directory ``parts`` resolved inside the root (borrowed: valid until
        the next entry)."""
        if not parts:
            return self.rootfd
        key = b"/".join(parts)
        fd = self.cache.get(key)
        if fd is None:
            fd = self._resolve(key, parts, create)
            if len(self.cache) >= CACHE_MAX:
                self._drop_cache()
            self.cache[key] = fd
        return fd

    def _resolve(self, key: bytes, parts: list[bytes], create: bool) -> int:
        """``openat2(RESOLVE_IN_ROOT)``; the component walk where the kernel lacks it or a directory
        must be created."""
        global _openat2_ok
        if _openat2_ok:
            try:
                return _openat2(self.rootfd, key, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            except FileNotFoundError:
                if not create:
                    raise
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                _openat2_ok = False
        return self._walk(parts, create)

    def _track_ancestors(self, fd: int) -> None:
        """Native: a directory holding this layer's entries, and its ancestors, survive an opaque
        marker or a whiteout above them (only their lower contents go)."""
        st = os.fstat(fd)
        fd = os.dup(fd)
        try:
            while (st.st_dev, st.st_ino) != self.root_id and (st.st_dev, st.st_ino) not in self.unpacked:
                self.unpacked.add((st.st_dev, st.st_ino))
                up = os.open(b"..", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = up
                st = os.fstat(fd)
        finally:
            os.close(fd)

    def _walk(self, parts: list[bytes], create: bool) -> int:
        """Resolve ``parts`` one component at a time with ``O_PATH|O_NOFOLLOW`` opens, following
        symlinks by hand inside the root; missing directories are created when ``create``."""
        stack: list[tuple[int, list[bytes]]] = [(self.rootfd, [])]
        todo = collections.deque(parts)
        links = 0
        try:
            while todo:
                c = todo.popleft()
                if c in (b"", b"."):
                    continue
                if c == b"..":
                    if len(stack) > 1:
                        os.close(stack.pop()[0])
                    continue
                dfd, dpath = stack[-1]
                try:
                    fd = os.open(c, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except FileNotFoundError:
                    if not create:
                        raise
                    self._mkdir_implicit(dfd, c, [*dpath, c])
                    fd = os.open(c, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    os.close(fd)
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    target = os.readlink(c, dir_fd=dfd)
                    if target.startswith(b"/"):
                        while len(stack) > 1:
                            os.close(stack.pop()[0])
                    todo.extendleft(reversed(target.split(b"/")))
                    continue
                if not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                stack.append((fd, [*dpath, c]))
            if len(stack) == 1:
                return os.dup(self.rootfd)
            return stack.pop()[0]
        finally:
            for fd, _ in stack[1:]:
                os.close(fd)

    def _mkdir_implicit(self, dfd: int, name: bytes, path: list[bytes]) -> None:
        """Create a parent directory the layer did not list: 0755 root, or (overlay) copied up from
        the nearest lower layer that has it: mode, owner and xattrs (not overlay's own)."""
        mode, uid, gid = 0o755, 0, 0
        xattrs: list[tuple[str, bytes]] = []
        lfd = self._lower_open(path)
        if lfd is not None:
            try:
                st = os.fstat(lfd)
                if stat.S_ISDIR(st.st_mode):
                    mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
                    proc = f"/proc/self/fd/{lfd}"
                    for k in os.listxattr(proc):
                        if not k.startswith("trusted.overlay."):
                            xattrs.append((k, os.getxattr(proc, k)))
            except OSError:
                pass
            finally:
                os.close(lfd)
        os.mkdir(name, 0o700, dir_fd=dfd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if self.same_owner:
                os.fchown(fd, uid, gid)
            for k, v in xattrs:
                with contextlib.suppress(OSError):
                    os.setxattr(fd, k, v)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _lower_open(self, path: list[bytes]) -> int | None:
        """An ``O_PATH`` fd of ``path`` in the nearest lower layer that has it (the caller closes
        it), following no symlinks: overlayfs merges only directories."""
        if not path:
            return None
        for lower in self.parents:
            fd = lower
            try:
                for i, c in enumerate(path):
                    nfd = os.open(c, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    if fd != lower:
                        os.close(fd)
                    fd = nfd
                    if i < len(path) - 1 and not stat.S_ISDIR(os.fstat(fd).st_mode):
                        break
                else:
                    found, fd = fd, lower
                    return found
            except OSError:
                continue
            finally:
                if fd != lower:
                    os.close(fd)
        return None

    def _in_lower(self, path: list[bytes]) -> bool:
        fd = self._lower_open(path)
        if fd is None:
            return False
        os.close(fd)
        return True

    # -- removal -------------------------------------------------------------------------------
    def _remove(self, dfd: int, name: bytes, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dfd)
            self._drop_cache()
        else:
            os.unlink(name, dir_fd=dfd)
            if stat.S_ISLNK(st.st_mode):
                self._drop_cache()

    def _clean_opaque(self, fd: int) -> None:
        """Native opaque directory: remove every child this layer did not create (recursing into
        the directories it did)."""
        for entry in os.scandir(fd):
            name = os.fsencode(entry.name)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) in self.unpacked:
                if stat.S_ISDIR(st.st_mode):
                    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                    try:
                        self._clean_opaque(sub)
                    finally:
                        os.close(sub)
                continue
            self._remove(fd, name, st)

    def _set_opaque(self, dfd: int, name: bytes) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)

    # -- whiteouts -----------------------------------------------------------------------------
    def whiteout(self, parent: list[bytes], base: bytes) -> None:
        if base == WH_OPAQUE:
            self._opaque(parent)
            return
        if base.startswith(WH_META):
            return  # aufs metadata (.wh..wh.plnk and friends): nothing to apply
        name = base[len(WH_PREFIX) :]
        if name in (b"", b".", b"..") or b"/" in name:
            raise InvalidArgument(f"layer has an invalid whiteout {base!r}")
        try:
            dfd = self.dirfd(parent, create=False)
            st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None and (st.st_dev, st.st_ino) in self.unpacked:
            # The image spec: a whiteout hides lower layers only; this layer's own entry stays.  A
            # directory keeps what this layer put in it, nothing from below.
            if stat.S_ISDIR(st.st_mode):
                if self.overlay:
                    self._set_opaque(dfd, name)
                else:
                    self._clean_dir(dfd, name)
            return
        if not self.overlay:
            if st is not None:
                self._remove(dfd, name, st)
            return
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                return  # an earlier whiteout (or a file) of this layer already hides the lower one
            self._remove(dfd, name, st)  # only holds whiteouts of this layer: replace it by one
        elif self.parents and not self._in_lower([*parent, name]):
            return  # nothing below to hide (a stray whiteout would show up in listings)
        dfd = self.dirfd(parent, create=True)
        os.mknod(name, stat.S_IFCHR, 0, dir_fd=dfd)
        os.chown(name, 0, 0, dir_fd=dfd, follow_symlinks=False)
        os.utime(name, ns=(0, 0), dir_fd=dfd, follow_symlinks=False)

    def _clean_dir(self, dfd: int, name: bytes) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            self._clean_opaque(fd)
        finally:
            os.close(fd)

    def _opaque(self, parent: list[bytes]) -> None:
        """``<parent>/.wh..wh..opq``: the lower layers' contents of ``parent`` are hidden."""
        if not parent:
            dfd, name = self.rootfd, b"."
        else:
            try:
                dfd = self.dirfd(parent[:-1], create=False)
                name = parent[-1]
                os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                if not self.overlay or (self.parents and not self._in_lower(parent)):
                    return  # nothing to hide
                dfd = self.dirfd(parent[:-1], create=True)
                self._mkdir_implicit(dfd, name, parent)
        if self.overlay:
            self._set_opaque(dfd, name)
        else:
            self._clean_dir(dfd, name)

    # -- entries -------------------------------------------------------------------------------
    def entry(self, h: Header, stream: _Stream) -> bool:
        """Apply one entry; False if it was skipped (it names the root)."""
        if self.stale:
            self._close_stale()
        parts = clean(h.name)
        if not parts:
            stream.skip(h.data_size + (-h.data_size % BLOCK), "an entry")
            return False
        parent, base = parts[:-1], parts[-1]
        typ = h.type
        if base.startswith(WH_PREFIX):
            stream.skip(h.data_size + (-h.data_size % BLOCK), "a whiteout")
            self.whiteout(parent, base)
            return True
        if typ in REGULAR:
            pass
        elif typ in (b"1", b"2", b"3", b"4", b"5", b"6"):
            # only regular files carry data; skip anything else a writer stored
            stream.skip(h.data_size + (-h.data_size % BLOCK), "an entry")
            h.data_size = 0
        else:
            raise InvalidArgument(
                f"layer entry {h.name.decode('utf-8', 'replace')!r} has unsupported tar type {typ!r}"
            )
        if self.same_owner and not (0 <= h.uid <= MAX_ID and 0 <= h.gid <= MAX_ID):
            raise InvalidArgument(
                f"layer entry {h.name.decode('utf-8', 'replace')!r} has owner {h.uid}:{h.gid}, "
                "which does not fit a Linux uid/gid"
            )
        dfd = self.dirfd(parent, create=True)
        key = b"/".join(parent)
        if key not in self.tracked:
            self._track_ancestors(dfd)
            self.tracked.add(key)
        try:
            st: os.stat_result | None = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        replaced_nondir = False
        if st is not None:
            if typ == b"5" and stat.S_ISDIR(st.st_mode):
                pass  # directories merge: only metadata changes
            elif typ == b"1" and self._same_as_target(h, st):
                return True
            else:
                self._remove(dfd, base, st)
                replaced_nondir = not stat.S_ISDIR(st.st_mode)
        if typ in REGULAR:
            self._regular(dfd, base, h, stream)
        elif typ == b"5":
            self._directory(dfd, base, h, parts, created=st is None or replaced_nondir,
                            opaque=self.overlay and replaced_nondir)
        elif typ == b"2":
            os.symlink(h.linkname, base, dir_fd=dfd)
            self._meta_path(dfd, base, h, link=True)
        elif typ == b"1":
            self._hardlink(dfd, base, h)
        else:
            self._node(dfd, base, h)
        return True

    def _track(self, fd: int) -> None:
        st = os.fstat(fd)
        self.unpacked.add((st.st_dev, st.st_ino))

    def _fd_meta(self, fd: int, h: Header, *, times: bool) -> None:
        if self.same_owner:
            os.fchown(fd, h.uid, h.gid)
        for key, value in h.xattrs:
            self._setxattr(fd, key, value, h)
        os.fchmod(fd, h.mode)
        if times:
            os.utime(fd, ns=(max(h.atime or 0, h.mtime), h.mtime))

    def _setxattr(self, target: int | str, key: str, value: bytes, h: Header, *, link: bool = False) -> None:
        if key.startswith("trusted."):
            return  # refused, as containerd does (would let a layer forge overlay metadata)
        try:
            os.setxattr(target, key, value, follow_symlinks=not link)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) or (
                e.errno == errno.EPERM and key.startswith("user.") and h.type not in REGULAR
            ):
                return
            raise

    def _regular(self, dfd: int, base: bytes, h: Header, stream: _Stream) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dfd)
        try:
            if h.sparse is None:
                stream.copy(fd, h.data_size, "a file's data")
            else:
                self._sparse(fd, h, stream)
            stream.skip(-h.data_size % BLOCK, "a file's padding")
            self._fd_meta(fd, h, times=True)
            self._track(fd)
        finally:
            os.close(fd)

    def _sparse(self, fd: int, h: Header, stream: _Stream) -> None:
        assert h.sparse is not None
        total = 0
        end = 0
        for off, n in h.sparse:
            if off < end or n < 0 or off + n > h.realsize:
                raise DataLoss(f"layer entry {h.name.decode('utf-8', 'replace')!r} has a bad sparse map")
            end = off + n
            total += n
        if total != h.data_size:
            raise DataLoss(f"layer entry {h.name.decode('utf-8', 'replace')!r}: sparse map does not match "
                           "its data size")
        for off, n in h.sparse:
            os.lseek(fd, off, os.SEEK_SET)
            stream.copy(fd, n, "a sparse file's data")
        os.ftruncate(fd, h.realsize)

    def _directory(self, dfd: int, base: bytes, h: Header, parts: list[bytes], *, created: bool,
                   opaque: bool) -> None:
        if created:
            os.mkdir(base, 0o700, dir_fd=dfd)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            self._fd_meta(fd, h, times=False)
            if opaque:  # replaced a whiteout or a file of this layer: the lower directory stays hidden
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            self._track(fd)
        finally:
            os.close(fd)
        self.dirtimes.append((parts, max(h.atime or 0, h.mtime), h.mtime))

    def _meta_path(self, dfd: int, base: bytes, h: Header, *, link: bool) -> None:
        """Owner, xattrs, mode and times for a symlink, device or FIFO (no fd to open safely)."""
        if self.same_owner:
            os.chown(base, h.uid, h.gid, dir_fd=dfd, follow_symlinks=False)
        if h.xattrs or not link:
            pfd = os.open(base, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                proc = f"/proc/self/fd/{pfd}"
                for key, value in h.xattrs:
                    if link:  # the magic link would follow: name the symlink through its parent
                        self._setxattr(f"/proc/self/fd/{dfd}/{os.fsdecode(base)}", key, value, h, link=True)
                    else:
                        self._setxattr(proc, key, value, h)
                if not link:
                    os.chmod(proc, h.mode)
                self._track(pfd)
            finally:
                os.close(pfd)
        else:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            self.unpacked.add((st.st_dev, st.st_ino))
        os.utime(base, ns=(max(h.atime or 0, h.mtime), h.mtime), dir_fd=dfd, follow_symlinks=False)

    def _node(self, dfd: int, base: bytes, h: Header) -> None:
        kind = {b"3": stat.S_IFCHR, b"4": stat.S_IFBLK, b"6": stat.S_IFIFO}[h.type]
        dev = 0
        if h.type != b"6":
            if not (0 <= h.devmajor <= 0xFFFFFFFF and 0 <= h.devminor <= 0xFFFFFFFF):
                raise InvalidArgument(f"layer entry {h.name.decode('utf-8', 'replace')!r} has a device "
                                      "number that does not fit")
            dev = os.makedev(h.devmajor, h.devminor)
        os.mknod(base, kind | 0o600, dev, dir_fd=dfd)
        self._meta_path(dfd, base, h, link=False)

    def _link_target(self, h: Header) -> tuple[int, bytes]:
        parts = clean(h.linkname)
        if not parts:
            raise InvalidArgument(f"layer entry {h.name.decode('utf-8', 'replace')!r} is a hard link to "
                                  "the root directory")
        try:
            return self.dirfd(parts[:-1], create=False), parts[-1]
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidArgument(
                f"layer entry {h.name.decode('utf-8', 'replace')!r} is a hard link to "
                f"{h.linkname.decode('utf-8', 'replace')!r}, which does not exist"
            ) from None

    def _same_as_target(self, h: Header, st: os.stat_result) -> bool:
        tfd, tbase = self._link_target(h)
        try:
            t = os.stat(tbase, dir_fd=tfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (t.st_dev, t.st_ino) == (st.st_dev, st.st_ino)

    def _hardlink(self, dfd: int, base: bytes, h: Header) -> None:
        tfd, tbase = self._link_target(h)
        try:
            t = os.stat(tbase, dir_fd=tfd, follow_symlinks=False)
        except FileNotFoundError:
            t = None
        if t is None or stat.S_ISDIR(t.st_mode):
            raise InvalidArgument(
                f"layer entry {h.name.decode('utf-8', 'replace')!r} is a hard link to "
                f"{h.linkname.decode('utf-8', 'replace')!r}, which is "
                f"{'missing' if t is None else 'a directory'}"
            )
        os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)

    def finish(self) -> None:
        """Directory times, last (creating children changed them)."""
        for parts, atime, mtime in self.dirtimes:
            if self.stale:
                self._close_stale()
            try:
                dfd = self.dirfd(parts[:-1], create=False)
                os.utime(parts[-1], ns=(atime, mtime), dir_fd=dfd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced later in the layer


def extract(next_chunk: Callable[[], bytes], root: str, *, whiteouts: str = "native",
            parents: Sequence[str] = (), same_owner: bool = True) -> int:
    """Apply the tar stream from ``next_chunk`` onto ``root``; returns the number of entries."""
    stream = _Stream(next_chunk)
    ex = _Extractor(root, whiteouts, parents, same_owner)
    count = 0
    h: Header | None = None
    try:
        while True:
            h = read_header(stream)
            if h is None:
                break
            if ex.entry(h, stream):
                count += 1
        ex.finish()
    except OSError as e:
        raise _fail(e, h.name if h is not None else b"") from e
    except PyctrError:
        raise
    except ValueError as e:  # os.* refuse a name, target or xattr key holding a NUL byte
        raise InvalidArgument(f"layer entry {(h.name if h else b'').decode('utf-8', 'replace')!r}: {e}") from e
    finally:
        ex.close()
    return count
