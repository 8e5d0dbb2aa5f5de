# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled tar parser and extractor (the hot path of :mod:`pyctr._speedups.tario`).

Same API and semantics as the pure-Python twin :mod:`pyctr._speedups._tario_py`.  Compiled here: the
chunk stream (file data written with the GIL released), tar header parsing, parent resolution with
``openat2(RESOLVE_IN_ROOT)`` by ``syscall()``, and the per-entry work for regular files and
directories (``openat``/``mkdirat``/``fstatat``/``fchown``/``fchmod``/``futimens`` on fds).  The rare
paths (whiteouts, devices, hard links, sparse maps, the ``O_PATH`` walk used where ``openat2`` is
missing, removals) are inherited from the twin's extractor so that their rules live in one place.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EEXIST, EINTR, ENOENT, ENOSYS, errno
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)

import os
import stat as _stat

from pyctr.errdefs import DataLoss, InvalidArgument, PyctrError

from . import _tario_py as _py

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, ...)
    enum:
        O_PATH
        O_DIRECTORY
        O_NOFOLLOW
        O_CLOEXEC
        O_WRONLY
        O_RDONLY
        O_CREAT
        O_EXCL
        AT_SYMLINK_NOFOLLOW
        AT_FDCWD

cdef extern from "<sys/stat.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    ctypedef unsigned long dev_t
    ctypedef unsigned long ino_t
    ctypedef unsigned int mode_t
    struct struct_stat "stat":
        dev_t st_dev
        ino_t st_ino
        mode_t st_mode
    int fstatat(int dirfd, const char *path, struct_stat *buf, int flags)
    int fstat(int fd, struct_stat *buf)
    int mkdirat(int dirfd, const char *path, mode_t mode)
    int fchmod(int fd, mode_t mode)
    int futimens(int fd, const timespec *times)
    bint S_ISDIR(mode_t m)

cdef extern from "<unistd.h>" nogil:
    ctypedef long ssize_t
    ssize_t write(int fd, const void *buf, size_t n)
    int close(int fd)
    int fchown(int fd, unsigned int uid, unsigned int gid)
    long syscall(long number, ...)

cdef extern from *:
    """
    #include <stdint.h>
    struct pyctr_open_how { uint64_t flags; uint64_t mode; uint64_t resolve; };
    """
    struct pyctr_open_how:
        uint64_t flags
        uint64_t mode
        uint64_t resolve

DEF SYS_OPENAT2 = 437
DEF RESOLVE_NO_MAGICLINKS = 0x02
DEF RESOLVE_IN_ROOT = 0x10
DEF BLOCK = 512
DEF MAX_SIZE = 1 << 62

cdef bint _openat2_ok = not _py.FORCE_FALLBACK


def use_openat2(bint enabled):
    """Use ``openat2`` (True) or the ``O_PATH`` walk (False) from now on; returns the old setting."""
    global _openat2_ok
    old = _openat2_ok
    _openat2_ok = enabled
    return old


cdef object _oserror(int err, object name=None):
    if name is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), name)


# ---------------------------------------------------------------------------------------------------
# the stream


cdef class _Stream:
    """A byte stream over the pipeline's chunks (same methods as the twin's)."""

    cdef object _next
    cdef bytes _buf
    cdef const char *_p
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _len

    def __init__(self, next_chunk):
        self._next = next_chunk
        self._buf = b""
        self._p = PyBytes_AS_STRING(self._buf)
        self._pos = 0
        self._len = 0

    cdef bint _fill(self) except -1:
        chunk = self._next()
        if not chunk:
            return False
        self._buf = bytes(chunk)
        self._p = PyBytes_AS_STRING(self._buf)
        self._len = PyBytes_GET_SIZE(self._buf)
        self._pos = 0
        return True

    cdef int _read_into(self, char *out, Py_ssize_t n, str what) except -1:
        cdef Py_ssize_t take
        while n:
            if self._pos == self._len and not self._fill():
                raise DataLoss(f"layer is truncated (in {what})")
            take = min(n, self._len - self._pos)
            memcpy(out, self._p + self._pos, take)
            self._pos += take
            out += take
            n -= take
        return 0

    cpdef bytes read(self, Py_ssize_t n, str what):
        """Exactly ``n`` bytes; DataLoss if the stream ends first."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        self._read_into(PyBytes_AS_STRING(out), n, what)
        return out

    cdef int c_header(self, char *block) except -1:
        """1 with the next 512-byte block in ``block``, 0 at a clean end of stream."""
        if self._pos == self._len and not self._fill():
            return 0
        self._read_into(block, BLOCK, "a tar header")
        return 1

    def header(self):
        cdef char block[BLOCK]
        if not self.c_header(block):
            return None
        return PyBytes_FromStringAndSize(block, BLOCK)

    cpdef copy(self, int fd, Py_ssize_t n, str what):
        """Write the next ``n`` bytes to ``fd`` (at its offset), the GIL released; -1 skips them."""
        cdef Py_ssize_t take, done
        cdef ssize_t w
        cdef const char *p
        cdef int err = 0
        while n:
            if self._pos == self._len and not self._fill():
                raise DataLoss(f"layer is truncated (in {what})")
            take = min(n, self._len - self._pos)
            if fd >= 0:
                p = self._p + self._pos
                done = 0
                with nogil:
                    while done < take:
                        w = write(fd, p + done, take - done)
                        if w < 0:
                            if errno == EINTR:
                                continue
                            err = errno
                            break
                        done += w
                if err:
                    raise _oserror(err)
            self._pos += take
            n -= take

    cpdef skip(self, Py_ssize_t n, str what):
        self.copy(-1, n, what)


# ---------------------------------------------------------------------------------------------------
# headers


cdef object _num(const unsigned char *f, int size, str what):
    """A numeric header field: octal, or GNU base-256 (big values go to the twin's parser)."""
    cdef int64_t v = 0
    cdef int i = 0
    cdef unsigned char c
    if f[0] & 0x80:  # base-256
        if f[0] == 0xFF or size > 12:
            return _py._num(PyBytes_FromStringAndSize(<const char *>f, size), what)
        v = f[0] & 0x7F
        for i in range(1, size):
            if v >> 55:
                return _py._num(PyBytes_FromStringAndSize(<const char *>f, size), what)
            v = (v << 8) | f[i]
        return v
    while i < size and f[i] == c' ':
        i += 1
    while i < size:
        c = f[i]
        if c == 0 or c == c' ':
            break
        if c < c'0' or c > c'7':
            raise DataLoss(f"layer has an invalid tar header ({what} field)")
        v = v * 8 + (c - c'0')
        i += 1
    return v


cdef inline int64_t _pad(int64_t n):
    return (BLOCK - n % BLOCK) % BLOCK


cdef bytes _cstr(const char *p, Py_ssize_t size):
    return PyBytes_FromStringAndSize(p, strnlen(p, size))


cdef bint _checksum_ok(const unsigned char *b) except -1:
    cdef long unsigned_sum = 256, signed_sum = 256
    cdef int i
    for i in range(BLOCK):
        if i < 148 or i >= 156:
            unsigned_sum += b[i]
            signed_sum += <signed char>b[i]
    want = _num(b + 148, 8, "checksum")
    return want == unsigned_sum or want == signed_sum


cdef bint _all_zero(const char *b):
    cdef int i
    for i in range(BLOCK):
        if b[i]:
            return False
    return True


cdef object _read_header(_Stream stream):
    """The next entry (extension records applied), or None at the end of the archive."""
    cdef char block[BLOCK]
    cdef const unsigned char *u = <const unsigned char *>block
    cdef _Pax pax = None
    cdef object longname = None, longlink = None
    cdef char typ
    while True:
        if not stream.c_header(block):
            if pax is not None or longname is not None or longlink is not None:
                raise DataLoss("layer is truncated (after an extension header)")
            return None
        if _all_zero(block):
            return None
        if not _checksum_ok(u):
            raise DataLoss("layer has a tar header with a bad checksum (corrupt or not a tar)")
        typ = block[156]
        size = _num(u + 124, 12, "size")
        if size < 0 or size > MAX_SIZE:
            raise DataLoss(f"layer has an entry of implausible size {size}")
        if typ == c'x' or typ == c'g' or typ == c'L' or typ == c'K':
            if size > _py.MAX_META:
                raise InvalidArgument(f"layer has an extension header of {size} bytes (limit {_py.MAX_META})")
            data = stream.read(size, "an extension header")
            stream.skip(-size % BLOCK, "an extension header")
            if typ == c'x':
                if pax is None:
                    pax = _Pax()
                pax.feed(data)
            elif typ == c'L':
                longname = _py._cstr(data)
            elif typ == c'K':
                longlink = _py._cstr(data)
            continue
        break

    h = _py.Header()
    name = _cstr(block, 100)
    if memcmp(block + 257, b"ustar\0", 6) == 0 and block[345]:
        name = _cstr(block + 345, 155) + b"/" + name
    h.name = longname if longname is not None else name
    h.linkname = longlink if longlink is not None else _cstr(block + 157, 100)
    h.type = PyBytes_FromStringAndSize(&block[156], 1)
    h.mode = _num(u + 100, 8, "mode") & 0o7777
    h.uid = _num(u + 108, 8, "uid")
    h.gid = _num(u + 116, 8, "gid")
    h.data_size = size
    h.mtime = max(-_py.TIME_MAX, min(_py.TIME_MAX, _num(u + 136, 12, "mtime") * 1_000_000_000))
    if typ == c'3' or typ == c'4':
        h.devmajor = _num(u + 329, 8, "devmajor")
        h.devminor = _num(u + 337, 8, "devminor")
    if typ == 0 and h.name.endswith(b"/"):
        h.type = b"5"
    if pax is not None:
        pax.apply(h)
        if h.data_size < 0 or h.data_size > MAX_SIZE:
            raise DataLoss(f"layer has an entry of implausible size {h.data_size}")
    if typ == c'S' or (pax is not None and pax.rest):
        # rare: old GNU sparse maps, xattrs and PAX sparse records are folded in by the twin's code
        return _py._finish_header(h, PyBytes_FromStringAndSize(block, BLOCK), pax.rest if pax else [],
                                  stream)
    return h


cdef list _clean(bytes name):
    """The twin's ``clean()``: components relative to the root, ``..`` clamped at the root."""
    cdef const char *p = PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), i = 0, start, ln
    cdef list out = []
    while i < n:
        start = i
        while i < n and p[i] != c'/':
            i += 1
        ln = i - start
        i += 1
        if ln == 0 or (ln == 1 and p[start] == c'.'):
            continue
        if ln == 2 and p[start] == c'.' and p[start + 1] == c'.':
            if out:
                out.pop()
            continue
        out.append(PyBytes_FromStringAndSize(p + start, ln))
    return out


cdef object _pax_ns(const char *p, Py_ssize_t n):
    """A PAX time (``[-]seconds[.fraction]``) in ns, or None if it is not one."""
    cdef Py_ssize_t i = 0
    cdef int64_t sec = 0, frac = 0
    cdef int digits = 0
    cdef bint neg = False
    if n and p[0] == c'-':
        neg = True
        i = 1
    if i >= n:
        return None
    while i < n and p[i] != c'.':
        if p[i] < c'0' or p[i] > c'9' or sec > 9_000_000_000:
            return None
        sec = sec * 10 + (p[i] - c'0')
        i += 1
    if i < n:
        i += 1
        while i < n:
            if p[i] < c'0' or p[i] > c'9':
                return None
            if digits < 9:
                frac = frac * 10 + (p[i] - c'0')
                digits += 1
            i += 1
    while digits < 9:
        frac *= 10
        digits += 1
    return -(sec * 1_000_000_000 + frac) if neg else sec * 1_000_000_000 + frac


cdef class _Pax:
    """PAX records for the next entry: the common keys parsed here, the rest left for the twin."""

    cdef public object path, linkpath, size, uid, gid, mtime, atime
    cdef public list rest

    def __init__(self):
        self.rest = []

    cdef int feed(self, bytes data) except -1:
        cdef const char *p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), pos = 0, sp, length, eq, klen, vstart, vlen
        while pos < n:
            if p[pos] == 0:
                break
            sp = pos
            length = 0
            while sp < n and c'0' <= p[sp] <= c'9' and length < n:
                length = length * 10 + (p[sp] - c'0')
                sp += 1
            if sp >= n or p[sp] != c' ' or length <= sp - pos or pos + length > n or p[pos + length - 1] != c'\n':
                raise DataLoss("layer has a malformed PAX header")
            eq = sp + 1
            while eq < pos + length - 1 and p[eq] != c'=':
                eq += 1
            if eq >= pos + length - 1:
                raise DataLoss("layer has a malformed PAX header")
            klen = eq - sp - 1
            vstart = eq + 1
            vlen = pos + length - 1 - vstart
            key = PyBytes_FromStringAndSize(p + sp + 1, klen)
            value = PyBytes_FromStringAndSize(p + vstart, vlen)
            if key == b"path":
                self.path = value
            elif key == b"linkpath":
                self.linkpath = value
            elif key == b"size":
                self.size = _py._pax_int(value, key)
            elif key == b"uid":
                self.uid = _py._pax_int(value, key)
            elif key == b"gid":
                self.gid = _py._pax_int(value, key)
            elif key == b"mtime" or key == b"atime":
                t = _pax_ns(p + vstart, vlen)
                if t is None:
                    t = _py._pax_time(value)
                if key == b"mtime":
                    self.mtime = t
                else:
                    self.atime = t
            elif key == b"ctime" or key == b"uname" or key == b"gname":
                pass  # not applied
            else:
                self.rest.append((key, value))
            pos += length
        return 0

    cdef int apply(self, h) except -1:
        if (self.path is not None and b"\0" in self.path) or (self.linkpath is not None and b"\0" in self.linkpath):
            raise InvalidArgument("layer has a PAX path or link path holding a NUL byte")
        if self.path is not None:
            h.name = self.path
        if self.linkpath is not None:
            h.linkname = self.linkpath
        if self.size is not None:
            h.data_size = self.size
        if self.uid is not None:
            h.uid = self.uid
        if self.gid is not None:
            h.gid = self.gid
        if self.mtime is not None:
            h.mtime = max(-_py.TIME_MAX, min(_py.TIME_MAX, self.mtime))
        if self.atime is not None:
            h.atime = max(-_py.TIME_MAX, min(_py.TIME_MAX, self.atime))
        return 0


# ---------------------------------------------------------------------------------------------------
# the extractor


class _Extractor(_py._Extractor):
    """The twin's extractor with the per-entry hot path compiled."""

    def _resolve(self, bytes key, parts, create):
        cdef pyctr_open_how how
        cdef int fd, err
        cdef int rootfd = self.rootfd
        cdef const char *ckey = key
        global _openat2_ok
        if _openat2_ok:
            memset(&how, 0, sizeof(how))
            how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC
            how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
            while True:
                with nogil:
                    fd = syscall(SYS_OPENAT2, rootfd, ckey, &how, sizeof(how))
                if fd >= 0:
                    return fd
                err = errno
                if err == EAGAIN or err == EINTR:
                    continue
                if err == ENOSYS:
                    _openat2_ok = False
                elif err != ENOENT or not create:
                    raise _oserror(err, key)
                break
        return self._walk(parts, create)

    def entry(self, h, _Stream stream):
        """Apply one entry; False if it was skipped (it names the root)."""
        cdef int dfd
        cdef struct_stat st
        cdef int rc
        cdef bytes typ = h.type
        cdef char t = typ[0]
        cdef int64_t size
        if self.stale:
            self._close_stale()
        parts = _clean(h.name)
        if not parts:
            size = h.data_size
            stream.skip(size + _pad(size), "an entry")
            return False
        parent = parts[:len(parts) - 1]
        base = <bytes>parts[len(parts) - 1]
        if base.startswith(b".wh."):
            size = h.data_size
            stream.skip(size + _pad(size), "a whiteout")
            self.whiteout(parent, base)
            return True
        regular = t == c'0' or t == c'7' or t == 0
        if not regular:
            if t == c'1' or t == c'2' or t == c'3' or t == c'4' or t == c'5' or t == c'6':
                size = h.data_size
                stream.skip(size + _pad(size), "an entry")
                h.data_size = 0
            else:
                raise InvalidArgument(
                    f"layer entry {h.name.decode('utf-8', 'replace')!r} has unsupported tar type {typ!r}"
                )
        if self.same_owner and not (0 <= h.uid <= _py.MAX_ID and 0 <= h.gid <= _py.MAX_ID):
            raise InvalidArgument(
                f"layer entry {h.name.decode('utf-8', 'replace')!r} has owner {h.uid}:{h.gid}, "
                "which does not fit a Linux uid/gid"
            )
        dfd = self.dirfd(parent, True)
        key = b"/".join(parent)
        if key not in self.tracked:
            self._track_ancestors(dfd)
            self.tracked.add(key)
        cdef const char *cbase = base
        with nogil:
            rc = fstatat(dfd, cbase, &st, AT_SYMLINK_NOFOLLOW)
        if rc < 0 and errno != ENOENT:
            raise _oserror(errno, base)
        exists = rc == 0
        replaced_nondir = False
        if exists:
            if t == c'5' and S_ISDIR(st.st_mode):
                pass  # directories merge: only metadata changes
            else:
                pst = os.stat(base, dir_fd=dfd, follow_symlinks=False)
                if t == c'1' and self._same_as_target(h, pst):
                    return True
                self._remove(dfd, base, pst)
                replaced_nondir = not S_ISDIR(st.st_mode)
        if regular:
            self._regular(dfd, base, h, stream)
        elif t == c'5':
            self._directory(dfd, base, h, parts, created=not exists or replaced_nondir,
                            opaque=self.overlay and replaced_nondir)
        elif t == c'2':
            os.symlink(h.linkname, base, dir_fd=dfd)
            self._meta_path(dfd, base, h, link=True)
        elif t == c'1':
            self._hardlink(dfd, base, h)
        else:
            self._node(dfd, base, h)
        return True

    def _regular(self, int dfd, bytes base, h, _Stream stream):
        cdef const char *cbase = base
        cdef int fd
        with nogil:
            fd = openat(dfd, cbase, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0:
            raise _oserror(errno, base)
        try:
            size = h.data_size
            if h.sparse is None:
                stream.copy(fd, size, "a file's data")
            else:
                self._sparse(fd, h, stream)
            stream.skip(-size % BLOCK, "a file's padding")
            _fd_meta(self, fd, h, True)
        finally:
            close(fd)

    def _directory(self, int dfd, bytes base, h, parts, *, created, opaque):
        cdef const char *cbase = base
        cdef int fd
        cdef int rc = 0
        if created:
            with nogil:
                rc = mkdirat(dfd, cbase, 0o700)
            if rc < 0:
                raise _oserror(errno, base)
        with nogil:
            fd = openat(dfd, cbase, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0:
            raise _oserror(errno, base)
        try:
            _fd_meta(self, fd, h, False)
            if opaque:
                os.setxattr(fd, _py.OPAQUE_XATTR, b"y")
        finally:
            close(fd)
        atime = h.atime
        mtime = h.mtime
        self.dirtimes.append((parts, mtime if atime is None or atime < mtime else atime, mtime))


cdef int _fd_meta(ex, int fd, h, bint times) except -1:
    """Owner, xattrs, mode, times (optional) on ``fd``; records the inode as this layer's."""
    cdef int rc = 0
    cdef unsigned int uid, gid
    cdef mode_t mode = h.mode
    cdef timespec ts[2]
    cdef struct_stat st
    if ex.same_owner:
        uid = h.uid
        gid = h.gid
        with nogil:
            rc = fchown(fd, uid, gid)
        if rc < 0:
            raise _oserror(errno)
    if h.xattrs:
        for key, value in h.xattrs:
            ex._setxattr(fd, key, value, h)
    with nogil:
        rc = fchmod(fd, mode)
    if rc < 0:
        raise _oserror(errno)
    if times:
        mtime = h.mtime
        atime = mtime if h.atime is None or h.atime < mtime else h.atime
        ts[0].tv_sec, ts[0].tv_nsec = divmod(atime, 1_000_000_000)
        ts[1].tv_sec, ts[1].tv_nsec = divmod(mtime, 1_000_000_000)
        with nogil:
            rc = futimens(fd, ts)
        if rc < 0:
            raise _oserror(errno)
    with nogil:
        rc = fstat(fd, &st)
    if rc < 0:
        raise _oserror(errno)
    ex.unpacked.add((st.st_dev, st.st_ino))
    return 0


def extract(next_chunk, str root, *, whiteouts="native", parents=(), same_owner=True):
    """Apply the tar stream from ``next_chunk`` onto ``root``; returns the number of entries."""
    cdef _Stream stream = _Stream(next_chunk)
    ex = _Extractor(root, whiteouts, parents, same_owner)
    cdef long count = 0
    h = None
    try:
        while True:
            h = _read_header(stream)
            if h is None:
                break
            if ex.entry(h, stream):
                count += 1
        ex.finish()
    except OSError as e:
        raise _py._fail(e, h.name if h is not None else b"") from e
    except PyctrError:
        raise
    except ValueError as e:  # a name, target or xattr key holding a NUL byte
        raise InvalidArgument(f"layer entry {(h.name if h else b'').decode('utf-8', 'replace')!r}: {e}") from e
    finally:
        ex.close()
    return count
