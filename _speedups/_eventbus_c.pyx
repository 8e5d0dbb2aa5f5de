# cython: language_level=3, boundscheck=False, wraparound=False
"""The event bus's dispatch path in Cython: envelopes, compiled filters, fan-out into bounded
per-subscriber ring buffers.  Same API and behaviour as ``_eventbus_py``."""

import os
import threading
import time

cimport cython
from libc.stdint cimport int64_t

OVERFLOW_TOPIC = "/events/overflow"

cdef enum:
    K_TOPIC = 0
    K_NAMESPACE = 1
    K_EVENT = 2
    K_NONE = 3

cdef enum:
    OP_PRESENT = 0
    OP_EQ = 1
    OP_NE = 2
    OP_RE = 3

_OPS = {"?": OP_PRESENT, "==": OP_EQ, "!=": OP_NE, "~=": OP_RE}


cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_REALTIME


cdef inline int64_t _now_ns() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


@cython.no_gc
@cython.freelist(256)
cdef class Envelope:
    """One event: when, in which namespace, what topic, and its payload (a plain dict, owned by the
    envelope once published: do not mutate it afterwards).  Not tracked by the cyclic GC: payloads are
    plain data."""

    cdef public int64_t timestamp
    cdef public str namespace
    cdef public str topic
    cdef public dict event

    def __init__(self, int64_t timestamp, str namespace, str topic, event=None):
        self.timestamp = timestamp
        self.namespace = namespace
        self.topic = topic
        self.event = event if type(event) is dict else (dict(event) if event else {})

    def to_dict(self):
        return {"timestamp": self.timestamp, "namespace": self.namespace, "topic": self.topic, "event": self.event}

    @classmethod
    def from_dict(cls, d):
        return cls(int(d["timestamp"]), str(d["namespace"]), str(d["topic"]), d.get("event") or {})

    def __repr__(self):
        return f"Envelope({self.timestamp}, {self.namespace!r}, {self.topic!r}, {self.event!r})"

    def __eq__(self, other):
        return isinstance(other, Envelope) and self.to_dict() == other.to_dict()

    __hash__ = None


cdef class _Sel:
    cdef int kind
    cdef int op
    cdef str value
    cdef object regex
    cdef list path


cdef _Sel _make_sel(s):
    cdef _Sel out = _Sel()
    path = tuple(s.fieldpath)
    if path == ("topic",):
        out.kind = K_TOPIC
    elif path == ("namespace",):
        out.kind = K_NAMESPACE
    elif len(path) > 1 and path[0] == "event":
        out.kind = K_EVENT
    else:
        out.kind = K_NONE
    out.op = _OPS[s.operator]
    out.value = s.value
    out.regex = s.regex
    out.path = list(path[1:])
    return out


def _conj(f):
    from pyctr.filters import All, Selector

    if isinstance(f, Selector):
        return [_make_sel(f)]
    if isinstance(f, All):
        out = []
        for g in f.filters:
            out.extend(_conj(g))
        return out
    raise TypeError(f"cannot compile filter {f!r}")


cdef class Matcher:
    """A compiled filter over envelopes."""

    cdef list _dnf
    cdef bint _always

    def __init__(self, flt=None):
        from pyctr.filters import ALWAYS, Any_

        if flt is None or flt is ALWAYS:
            self._always = True
            self._dnf = []
        elif isinstance(flt, Any_):
            self._always = False
            self._dnf = [_conj(f) for f in flt.filters]
        else:
            self._always = False
            self._dnf = [_conj(flt)]

    cdef bint _match(self, Envelope env) except -1:
        cdef list conj
        cdef _Sel s
        cdef str got
        cdef bint present, ok
        if self._always:
            return True
        for conj in self._dnf:
            ok = True
            for s in conj:
                if s.kind == K_TOPIC:
                    got = env.topic
                    present = True
                elif s.kind == K_NAMESPACE:
                    got = env.namespace
                    present = True
                elif s.kind == K_EVENT:
                    from pyctr.filters import dict_adaptor

                    got, present = dict_adaptor(env.event)(s.path)
                else:
                    got = ""
                    present = False
                if s.op == OP_EQ:
                    ok = present and got == s.value
                elif s.op == OP_NE:
                    ok = got != s.value
                elif s.op == OP_PRESENT:
                    ok = present
                else:
                    ok = s.regex.search(got) is not None
                if not ok:
                    break
            if ok:
                return True
        return False

    def match(self, Envelope env):
        return self._match(env)


cdef class Subscriber:
    """A bounded ring of envelopes for one subscriber (see the twin for the contract)."""

    cdef public Matcher matcher
    cdef public Py_ssize_t maxsize
    cdef public Py_ssize_t dropped
    cdef Py_ssize_t _reported
    cdef list _ring
    cdef Py_ssize_t _head
    cdef Py_ssize_t _count
    cdef object _cond
    cdef bint _waiting
    cdef int _efd
    cdef public bint closed

    def __init__(self, Matcher matcher, Py_ssize_t maxsize=1024):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.matcher = matcher
        self.maxsize = maxsize
        self.dropped = 0
        self._reported = 0
        self._ring = [None] * maxsize
        self._head = 0
        self._count = 0
        self._cond = threading.Condition(threading.Lock())
        self._waiting = False
        self._efd = -1
        self.closed = False

    cdef bint _offer(self, Envelope env) except -1:
        if self._count >= self.maxsize:
            self.dropped += 1
            return False
        cdef Py_ssize_t i = self._head + self._count
        if i >= self.maxsize:
            i -= self.maxsize
        self._ring[i] = env
        self._count += 1
        if self._efd >= 0 and self._count == 1:
            try:
                os.eventfd_write(self._efd, 1)
            except OSError:
                pass
        if self._waiting:
            with self._cond:
                self._cond.notify()
        return True

    cdef object _pop(self):
        if self._count == 0:
            return None
        env = self._ring[self._head]
        self._ring[self._head] = None
        self._head += 1
        if self._head == self.maxsize:
            self._head = 0
        self._count -= 1
        return env

    cdef object _overflow(self):
        cdef Py_ssize_t n
        if self.dropped != self._reported:
            n = self.dropped - self._reported
            self._reported = self.dropped
            return Envelope(_now_ns(), "", OVERFLOW_TOPIC, {"dropped": n})
        return None

    def get_nowait(self):
        ov = self._overflow()
        if ov is not None:
            return ov
        return self._pop()

    def get(self, timeout=None):
        env = self.get_nowait()
        if env is not None or self.closed:
            return env
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiting = True
            try:
                while self._count == 0 and self.dropped == self._reported and not self.closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                self._waiting = False
        return self.get_nowait()

    def drain(self, Py_ssize_t limit=1 << 30):
        cdef list out = []
        ov = self._overflow()
        if ov is not None:
            out.append(ov)
        while self._count and len(out) < limit:
            out.append(self._pop())
        return out

    def __len__(self):
        return self._count

    def fileno(self):
        if self._efd < 0:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            if self._count or self.dropped != self._reported:
                os.eventfd_write(self._efd, 1)
        return self._efd

    def close(self):
        self.closed = True
        with self._cond:
            self._cond.notify_all()
        if self._efd >= 0:
            try:
                os.eventfd_write(self._efd, 1)
            except OSError:
                pass

    def release(self):
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1


cdef class Bus:
    """Fan-out of envelopes to subscribers whose matcher accepts them.  Never blocks a publisher."""

    cdef tuple _subs
    cdef object _lock
    cdef public dict published
    cdef public dict delivered
    cdef public dict dropped

    def __init__(self):
        self._subs = ()
        self._lock = threading.Lock()
        self.published = {}
        self.delivered = {}
        self.dropped = {}

    def subscribe(self, Matcher matcher=None, Py_ssize_t maxsize=1024):
        sub = Subscriber(matcher if matcher is not None else Matcher(), maxsize)
        with self._lock:
            self._subs = self._subs + (sub,)
        return sub

    def unsubscribe(self, Subscriber sub):
        with self._lock:
            self._subs = tuple([s for s in self._subs if s is not sub])
        sub.close()

    @property
    def subscribers(self):
        return len(self._subs)

    def publish(self, str namespace, str topic, event=None, int64_t timestamp=0):
        cdef Envelope env = Envelope.__new__(Envelope)
        env.timestamp = timestamp if timestamp else _now_ns()
        env.namespace = namespace
        env.topic = topic
        env.event = event if type(event) is dict else (dict(event) if event else {})
        self._forward(env)
        return env

    def forward(self, Envelope env):
        return self._forward(env)

    cdef Py_ssize_t _forward(self, Envelope env) except -1:
        cdef str topic = env.topic
        cdef Subscriber sub
        cdef Py_ssize_t n = 0, d = 0
        cdef dict pub = self.published
        pub[topic] = pub.get(topic, 0) + 1
        for sub in self._subs:
            if sub.matcher._match(env):
                if sub._offer(env):
                    n += 1
                else:
                    d += 1
        if n:
            self.delivered[topic] = self.delivered.get(topic, 0) + n
        if d:
            self.dropped[topic] = self.dropped.get(topic, 0) + d
        return n
