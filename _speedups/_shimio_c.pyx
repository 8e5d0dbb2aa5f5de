# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled shim stdio loop: ``epoll`` + ``splice(2)``, the twin of :mod:`pyctr._speedups._shimio_py`.

Same interface and rules (see the twin's docstring): watched fds are reported to the caller, pumps
copy from a source to one or more destinations with at most one buffer each (back-pressure by not
reading the source while a destination is full), ``splice`` when there is one raw destination and a
pipe at either end.  The GIL is released around ``epoll_wait`` and around every ``splice``, ``read``
and ``write``; a splice pump moves up to 16 MiB per wake-up without going back to Python objects.
The json-file encoder is shared with the twin.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EBADF, ECONNRESET, EINTR, EINVAL, EIO, ENOSPC, EPIPE, errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import os

from . import _shimio_py as _py

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP

cdef extern from "<fcntl.h>" nogil:
    ssize_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len, unsigned int flags)
    int fcntl(int fd, int cmd, ...)
    enum:
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK
        F_GETFL
        F_SETFL
        O_NONBLOCK

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)
    enum:
        PR_SET_CHILD_SUBREAPER

READ = 1
WRITE = 4
RAW = 0
JSON = 1

cdef enum:
    MAX_EVENTS = 256
    SPLICE_MAX = 1048576
    ROUNDS = 16

json_lines = _py.json_lines
json_time = _py.json_time


def set_subreaper():
    """Make this process the child subreaper (``prctl(PR_SET_CHILD_SUBREAPER, 1)``)."""
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(errno, os.strerror(errno))


cdef inline int _mask_to_ep(int m):
    return (EPOLLIN if m & 1 else 0) | (EPOLLOUT if m & 4 else 0)


cdef class _Dest:
    cdef public int fd
    cdef public int kind
    cdef public bint pollable
    cdef public str stream
    cdef public bytearray partial
    cdef public bytes pending
    cdef public Py_ssize_t off

    def __init__(self, int fd, int kind, str stream):
        self.fd = fd
        self.kind = kind
        self.stream = stream
        self.partial = bytearray()
        self.pending = b""
        self.off = 0
        self.pollable = _py._pollable(fd)


cdef class _Pump:
    cdef public int id
    cdef public int src
    cdef public bint eof
    cdef public bint splice
    cdef public bint src_pollable
    cdef public list dests
    cdef public set blocked

    def __init__(self, int pid, int src, list dests):
        self.id = pid
        self.src = src
        self.dests = dests
        self.eof = False
        self.blocked = set()
        self.src_pollable = _py._pollable(src)
        self.splice = (len(dests) == 1 and (<_Dest>dests[0]).kind == RAW
                       and (_py._is_pipe(src) or _py._is_pipe((<_Dest>dests[0]).fd)))


cdef void _set_nonblock(int fd):
    cdef int fl = fcntl(fd, F_GETFL)
    if fl >= 0 and not (fl & O_NONBLOCK):
        fcntl(fd, F_SETFL, fl | O_NONBLOCK)


cdef class Loop:
    """See :mod:`pyctr._speedups._shimio_py`."""

    cdef int epfd
    cdef public int bufsize
    cdef char *buf
    cdef dict _interest   # fd -> registered mask (READ/WRITE bits)
    cdef dict _watched    # fd -> mask asked for by the caller
    cdef dict _by_src     # fd -> list of pumps
    cdef dict _by_dst     # fd -> list of pumps
    cdef dict _pumps
    cdef int _next
    cdef list _done
    cdef epoll_event events[MAX_EVENTS]

    def __cinit__(self, int bufsize=262144):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, os.strerror(errno))
        self.bufsize = bufsize
        self.buf = <char *>malloc(bufsize)
        if self.buf == NULL:
            raise MemoryError()
        self._interest = {}
        self._watched = {}
        self._by_src = {}
        self._by_dst = {}
        self._pumps = {}
        self._next = 1
        self._done = []

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1
        if self.buf != NULL:
            free(self.buf)
            self.buf = NULL

    # -- registration ---------------------------------------------------------------------------

    cdef int _mask(self, int fd):
        cdef int mask = self._watched.get(fd, 0)
        cdef _Pump p
        for p in self._by_src.get(fd, ()):
            if not p.blocked and not p.eof:
                mask |= 1
        for p in self._by_dst.get(fd, ()):
            if fd in p.blocked:
                mask |= 4
        return mask

    cdef _update(self, int fd):
        cdef int mask = self._mask(fd)
        cdef int old = self._interest.get(fd, 0)
        cdef epoll_event ev
        cdef int rc
        if mask == old:
            return
        ev.events = _mask_to_ep(mask)
        ev.data.u64 = 0
        ev.data.fd = fd
        if not mask:
            rc = epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev)
            del self._interest[fd]
        elif not old:
            rc = epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev)
            if rc == 0:
                self._interest[fd] = mask
        else:
            rc = epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, &ev)
            self._interest[fd] = mask
        if rc != 0 and mask:
            raise OSError(errno, f"epoll_ctl({fd}): {os.strerror(errno)}")

    cdef _update_pump(self, _Pump p):
        cdef _Dest d
        if p.src_pollable:
            self._update(p.src)
        for d in p.dests:
            if d.pollable:
                self._update(d.fd)

    def watch(self, int fd, int events=1):
        """Report ``events`` (``READ``/``WRITE``) on ``fd`` from :meth:`poll`."""
        self._watched[fd] = events & 5
        self._update(fd)

    def unwatch(self, int fd):
        if self._watched.pop(fd, None) is not None:
            self._update(fd)

    def add_pump(self, int src, list dests):
        """Copy from ``src`` to each ``(fd, kind, stream)`` (kind ``RAW`` or ``JSON``); returns its id."""
        cdef int pid = self._next
        cdef _Dest d
        self._next += 1
        p = _Pump(pid, src, [_Dest(fd, kind, stream) for fd, kind, stream in dests])
        self._pumps[pid] = p
        if p.src_pollable:
            _set_nonblock(src)
            self._by_src.setdefault(src, []).append(p)
        for d in p.dests:
            if d.pollable:
                _set_nonblock(d.fd)
                self._by_dst.setdefault(d.fd, []).append(p)
        if p.src_pollable:
            self._update_pump(p)
        else:
            self._read(p)
        return pid

    def remove_pump(self, int pid):
        """Stop a pump (its fds stay open)."""
        cdef _Pump p = self._pumps.pop(pid, None)
        cdef _Dest d
        if p is None:
            return
        fds = []
        if p.src_pollable:
            lst = self._by_src[p.src]
            lst.remove(p)
            if not lst:
                del self._by_src[p.src]
            fds.append(p.src)
        for d in p.dests:
            lst = self._by_dst.get(d.fd)
            if lst is not None and p in lst:
                lst.remove(p)
                if not lst:
                    del self._by_dst[d.fd]
                fds.append(d.fd)
        for fd in fds:
            if fd in self._interest or fd in self._watched:
                self._update(fd)

    def pump_active(self, int pid):
        return pid in self._pumps

    def pumps(self):
        return len(self._pumps)

    def close(self):
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1

    # -- the loop -------------------------------------------------------------------------------

    def poll(self, timeout):
        """Wait up to ``timeout`` seconds, run the pumps; return (watched fd events, finished pump ids)."""
        cdef int ms
        cdef int n, i, fd, want
        cdef uint32_t evs
        cdef _Pump p
        if timeout is None:
            ms = -1
        else:
            ms = <int>(max(0.0, float(timeout)) * 1000.0 + 0.999)
        events = []
        if self._done:
            ms = 0
        with nogil:
            n = epoll_wait(self.epfd, self.events, MAX_EVENTS, ms)
        if n < 0:
            if errno == EINTR:
                n = 0
            else:
                raise OSError(errno, os.strerror(errno))
        for i in range(n):
            fd = self.events[i].data.fd
            evs = self.events[i].events
            if evs & (EPOLLERR | EPOLLHUP):
                evs |= EPOLLIN | EPOLLOUT  # let the read or write see the error or EOF
            want = self._watched.get(fd, 0)
            if want:
                want &= (1 if evs & EPOLLIN else 0) | (4 if evs & EPOLLOUT else 0)
                if want:
                    events.append((fd, want))
            if evs & EPOLLOUT:
                for p in list(self._by_dst.get(fd, ())):
                    if fd in p.blocked:
                        p.blocked.discard(fd)
                        self._flush(p)
                        if not p.blocked and not p.eof and not p.src_pollable:
                            self._read(p)
                        elif p.id in self._pumps:
                            self._update_pump(p)
            if evs & EPOLLIN:
                for p in list(self._by_src.get(fd, ())):
                    if not p.blocked and not p.eof:
                        self._read(p)
        done = self._done
        self._done = []
        return events, done

    cdef _read(self, _Pump p):
        cdef _Dest d
        cdef ssize_t r
        cdef int src = p.src, dst, err = 0
        cdef int rounds
        while True:
            for rounds in range(ROUNDS):
                if p.blocked or p.eof:
                    break
                if p.splice:
                    d = <_Dest>p.dests[0]
                    dst = d.fd
                    with nogil:
                        r = splice(src, NULL, dst, NULL, SPLICE_MAX, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                        err = errno if r < 0 else 0
                    if r < 0:
                        if err == EAGAIN:
                            # the source is empty or the destination full: ask for EPOLLOUT once
                            if d.pollable:
                                p.blocked.add(dst)
                            break
                        if err == EINTR:
                            continue
                        if err == EINVAL:  # an O_APPEND file: copy through user space
                            p.splice = False
                            continue
                        if err in (EPIPE, ECONNRESET, EBADF, EIO):
                            self._drop(p, d)
                            continue
                        p.splice = False  # anything else: let read/write find out which side failed
                        continue
                    if r == 0:
                        self._finish(p)
                        return
                    continue
                with nogil:
                    r = read(src, self.buf, self.bufsize)
                    err = errno if r < 0 else 0
                if r < 0:
                    if err == EAGAIN:
                        break
                    if err == EINTR:
                        continue
                    r = 0  # EIO (a pty master once the slave closed) or any error: the end of the source
                if r == 0:
                    self._finish(p)
                    return
                if len(p.dests) == 1 and (<_Dest>p.dests[0]).kind == RAW:
                    # one raw destination: write straight from the buffer, keep only what is left
                    d = <_Dest>p.dests[0]
                    if self._write_direct(p, d, r):
                        continue
                    break
                data = PyBytes_FromStringAndSize(self.buf, r)
                for d in p.dests:
                    d.pending = json_lines(data, d.stream, d.partial) if d.kind == JSON else data
                    d.off = 0
                self._flush(p)
            if p.id in self._pumps and not p.src_pollable and not p.blocked and not p.eof:
                continue  # files never block: go on until EOF or back-pressure
            break
        if p.id in self._pumps:
            self._update_pump(p)

    cdef bint _write_direct(self, _Pump p, _Dest d, ssize_t n) except -1:
        """Write ``n`` bytes of the loop's buffer to ``d``; True if all went (else the rest is pending)."""
        cdef ssize_t off = 0, r
        cdef int fd = d.fd, err = 0
        while off < n:
            with nogil:
                r = write(fd, self.buf + off, n - off)
                err = errno if r < 0 else 0
            if r < 0:
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    d.pending = PyBytes_FromStringAndSize(self.buf + off, n - off)
                    d.off = 0
                    p.blocked.add(fd)
                    return False
                self._drop(p, d)  # EPIPE (the reader went away), ENOSPC, EIO ...: this one is lost
                return True
            off += r
        return True

    cdef _drop(self, _Pump p, _Dest d):
        p.dests.remove(d)
        p.blocked.discard(d.fd)
        p.splice = False
        lst = self._by_dst.get(d.fd)
        if lst is not None and p in lst:
            lst.remove(p)
            if not lst:
                del self._by_dst[d.fd]
            self._update(d.fd)

    cdef _finish(self, _Pump p):
        cdef _Dest d
        p.eof = True
        for d in p.dests:
            if d.kind == JSON and d.partial:
                d.pending = d.pending[d.off:] + json_lines(b"", d.stream, d.partial, True)
                d.off = 0
        self._flush(p)

    cdef _flush(self, _Pump p):
        cdef _Dest d
        cdef ssize_t r, left
        cdef int fd, err = 0
        cdef const char *ptr
        for d in list(p.dests):
            while d.off < PyBytes_GET_SIZE(d.pending):
                fd = d.fd
                ptr = PyBytes_AS_STRING(d.pending) + d.off
                left = PyBytes_GET_SIZE(d.pending) - d.off
                with nogil:
                    r = write(fd, ptr, left)
                    err = errno if r < 0 else 0
                if r < 0:
                    if err == EAGAIN:
                        p.blocked.add(fd)
                        break
                    if err == EINTR:
                        continue
                    d.pending = b""  # EPIPE, ENOSPC, EIO ...: this destination is lost
                    d.off = 0
                    self._drop(p, d)
                    break
                d.off += r
            if d.off >= PyBytes_GET_SIZE(d.pending):
                d.pending = b""
                d.off = 0
        if p.eof and not p.blocked and p.id in self._pumps:
            self.remove_pump(p.id)
            self._done.append(p.id)
