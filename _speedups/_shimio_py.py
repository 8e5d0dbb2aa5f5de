"""Shim stdio loop, pure Python (``selectors`` + ``os.splice``); the twin of ``_shimio_c``.

A :class:`Loop` multiplexes two kinds of file descriptors:

* *watched* fds (the shim's RPC sockets, its signal pipe): :meth:`Loop.poll` returns their events to
  the caller;
* *pumps*: byte copies from a source (a container's stdout/stderr pipe, a pty master, a stdin FIFO or
  socket) to one or more destinations (FIFOs, files, sockets, the container's stdin pipe, a docker
  json-file log).  Pumps run inside :meth:`Loop.poll` and are reported once finished (EOF on the
  source, everything written).

Back-pressure: a pump holds at most one buffer (``bufsize`` bytes); while a destination cannot take
it (``EAGAIN``), the source is not read, so a slow reader slows the container instead of growing
memory.  With one raw destination and a pipe at either end, bytes move with ``splice(2)`` and never
enter user space.  A destination that fails (``EPIPE``: its reader went away) is dropped; a pump with
no destination left keeps draining its source so the container never blocks on it.

Nothing here closes a file descriptor: the caller owns them all.
"""

from __future__ import annotations

import errno
import os
import stat
import time

READ = 1  # EPOLLIN
WRITE = 4  # EPOLLOUT

RAW = 0
JSON = 1

_EV_READ = 1  # selectors.EVENT_READ / EVENT_WRITE (selectors is imported only by Loop: the shim stays small)
_EV_WRITE = 2

_SPLICE_MAX = 1 << 20
_JSON_PARTIAL = 16 * 1024  # docker splits longer lines the same way


def set_subreaper() -> None:
    """Make this process the child subreaper (``prctl(PR_SET_CHILD_SUBREAPER, 1)``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def json_time(t: float | None = None) -> str:
    """RFC 3339 UTC with nanoseconds, as docker's json-file writes it."""
    ns = time.time_ns() if t is None else int(t * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def _escape(data: bytes) -> str:
    import json

    return json.dumps(data.decode("utf-8", "replace"), ensure_ascii=False)[1:-1]


def json_lines(data: bytes, stream: str, partial: bytearray, final: bool = False) -> bytes:
    """Encode ``data`` (appended to ``partial``) as json-file lines; keep an incomplete tail."""
    partial += data
    out = []
    now = ""
    start = 0
    while True:
        nl = partial.find(b"\n", start)
        if nl < 0:
            break
        if not now:
            now = json_time()
        line = _escape(bytes(partial[start:nl + 1]))
        out.append(f'{{"log":"{line}","stream":"{stream}","time":"{now}"}}\n')
        start = nl + 1
    rest = len(partial) - start
    if rest and (final or rest >= _JSON_PARTIAL):
        now = now or json_time()
        out.append(f'{{"log":"{_escape(bytes(partial[start:]))}","stream":"{stream}","time":"{now}"}}\n')
        start = len(partial)
    del partial[:start]
    return "".join(out).encode()


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISBLK(mode))


class _Dest:
    __slots__ = ("fd", "kind", "partial", "pending", "pollable", "stream")

    def __init__(self, fd: int, kind: int, stream: str) -> None:
        self.fd = fd
        self.kind = kind
        self.stream = stream
        self.partial = bytearray()
        self.pending = b""  # bytes taken from the source, not yet written here
        self.pollable = _pollable(fd)


class _Pump:
    __slots__ = ("blocked", "dests", "eof", "id", "splice", "src", "src_pollable")

    def __init__(self, pid: int, src: int, dests: list[_Dest]) -> None:
        self.id = pid
        self.src = src
        self.dests = dests
        self.eof = False
        self.blocked: set[int] = set()  # destinations we wait EPOLLOUT on
        self.src_pollable = _pollable(src)
        self.splice = len(dests) == 1 and dests[0].kind == RAW and (_is_pipe(src) or _is_pipe(dests[0].fd))


class Loop:
    """See the module docstring."""

    def __init__(self, bufsize: int = 1 << 18) -> None:
        self.bufsize = bufsize
        import selectors

        self._sel = selectors.DefaultSelector()
        self._interest: dict[int, int] = {}  # fd -> registered selector mask
        self._watched: dict[int, int] = {}  # fd -> selector mask the caller asked for
        self._by_src: dict[int, list[_Pump]] = {}
        self._by_dst: dict[int, list[_Pump]] = {}
        self._pumps: dict[int, _Pump] = {}
        self._next = 1
        self._done: list[int] = []

    # -- registration ------------------------------------------------------------------------------

    def _mask(self, fd: int) -> int:
        mask = self._watched.get(fd, 0)
        for p in self._by_src.get(fd, ()):
            if not p.blocked and not p.eof:
                mask |= _EV_READ
        for p in self._by_dst.get(fd, ()):
            if fd in p.blocked:
                mask |= _EV_WRITE
        return mask

    def _update(self, fd: int) -> None:
        mask = self._mask(fd)
        old = self._interest.get(fd, 0)
        if mask == old:
            return
        if not mask:
            self._sel.unregister(fd)
            del self._interest[fd]
        elif not old:
            self._sel.register(fd, mask)
            self._interest[fd] = mask
        else:
            self._sel.modify(fd, mask)
            self._interest[fd] = mask

    def _update_pump(self, p: _Pump) -> None:
        if p.src_pollable:
            self._update(p.src)
        for d in p.dests:
            if d.pollable:
                self._update(d.fd)

    def watch(self, fd: int, events: int = READ) -> None:
        """Report ``events`` (``READ``/``WRITE``) on ``fd`` from :meth:`poll`."""
        self._watched[fd] = (_EV_READ if events & READ else 0) | (
            _EV_WRITE if events & WRITE else 0)
        self._update(fd)

    def unwatch(self, fd: int) -> None:
        if self._watched.pop(fd, None) is not None:
            self._update(fd)

    def add_pump(self, src: int, dests: list[tuple[int, int, str]]) -> int:
        """Copy from ``src`` to each ``(fd, kind, stream)`` (kind ``RAW`` or ``JSON``); returns its id."""
        pid = self._next
        self._next += 1
        p = _Pump(pid, src, [_Dest(fd, kind, stream) for fd, kind, stream in dests])
        self._pumps[pid] = p
        if p.src_pollable:
            os.set_blocking(src, False)
            self._by_src.setdefault(src, []).append(p)
        for d in p.dests:
            if d.pollable:
                os.set_blocking(d.fd, False)
                self._by_dst.setdefault(d.fd, []).append(p)
        if p.src_pollable:
            self._update_pump(p)
        else:  # a regular file as the source: always readable
            self._read(p)
        return pid

    def remove_pump(self, pid: int) -> None:
        """Stop a pump (its fds stay open)."""
        p = self._pumps.pop(pid, None)
        if p is None:
            return
        fds = []
        if p.src_pollable:
            self._by_src[p.src].remove(p)
            if not self._by_src[p.src]:
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

    def pump_active(self, pid: int) -> bool:
        return pid in self._pumps

    def pumps(self) -> int:
        return len(self._pumps)

    def close(self) -> None:
        self._sel.close()

    # -- the loop ----------------------------------------------------------------------------------

    def poll(self, timeout: float | None) -> tuple[list[tuple[int, int]], list[int]]:
        """Wait up to ``timeout`` seconds, run the pumps; return (watched fd events, finished pump ids)."""
        events: list[tuple[int, int]] = []
        ready = [] if self._done else self._sel.select(timeout)
        for key, mask in ready:
            fd = key.fd
            want = self._watched.get(fd, 0) & mask
            if want:
                events.append((fd, (READ if want & _EV_READ else 0)
                               | (WRITE if want & _EV_WRITE else 0)))
            if mask & _EV_WRITE:
                for p in list(self._by_dst.get(fd, ())):
                    if fd in p.blocked:
                        p.blocked.discard(fd)
                        self._flush(p)
                        if not p.blocked and not p.eof and not p.src_pollable:
                            self._read(p)
                        elif p.id in self._pumps:
                            self._update_pump(p)
            if mask & _EV_READ:
                for p in list(self._by_src.get(fd, ())):
                    if not p.blocked and not p.eof:
                        self._read(p)
        done, self._done = self._done, []
        return events, done

    def _read(self, p: _Pump, rounds: int = 16) -> None:
        for _ in range(rounds):
            if p.blocked or p.eof:
                break
            if p.splice:
                d = p.dests[0]
                try:
                    n = os.splice(p.src, d.fd, _SPLICE_MAX, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    # the source is empty or the destination full: ask for EPOLLOUT once
                    if d.pollable:
                        p.blocked.add(d.fd)
                    break
                except OSError as e:
                    if e.errno == errno.EINVAL:  # an O_APPEND file: copy through user space
                        p.splice = False
                        continue
                    if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.EIO):
                        self._drop(p, d)
                        continue
                    p.splice = False  # anything else: let read/write find out which side failed
                    continue
                if n == 0:
                    self._finish(p)
                    return
                continue
            try:
                data = os.read(p.src, self.bufsize)
            except BlockingIOError:
                break
            except OSError:
                data = b""  # EIO (a pty master once the slave closed) or any error: the end of the source
            if not data:
                self._finish(p)
                return
            for d in p.dests:
                d.pending = json_lines(data, d.stream, d.partial) if d.kind == JSON else data
            self._flush(p)
        if p.id in self._pumps:
            if not p.src_pollable and not p.blocked and not p.eof:
                self._read(p)  # files never block; continue until EOF or back-pressure
                return
            self._update_pump(p)

    def _drop(self, p: _Pump, d: _Dest) -> None:
        p.dests.remove(d)
        p.blocked.discard(d.fd)
        p.splice = False
        lst = self._by_dst.get(d.fd)
        if lst is not None and p in lst:
            lst.remove(p)
            if not lst:
                del self._by_dst[d.fd]
            self._update(d.fd)

    def _finish(self, p: _Pump) -> None:
        p.eof = True
        for d in p.dests:
            if d.kind == JSON and d.partial:
                d.pending += json_lines(b"", d.stream, d.partial, final=True)
        self._flush(p)

    def _flush(self, p: _Pump) -> None:
        for d in list(p.dests):
            while d.pending:
                try:
                    n = os.write(d.fd, d.pending)
                except BlockingIOError:
                    p.blocked.add(d.fd)
                    break
                except OSError:
                    d.pending = b""  # EPIPE, ENOSPC, EIO ...: this destination is lost
                    self._drop(p, d)
                    break
                d.pending = d.pending[n:]
        if p.eof and not p.blocked and p.id in self._pumps:
            self.remove_pump(p.id)
            self._done.append(p.id)
