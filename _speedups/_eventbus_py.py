"""Pure-Python twin of the event bus's dispatch path (see ``_eventbus_c.pyx``, same API)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

OVERFLOW_TOPIC = "/events/overflow"

# Field kinds a compiled selector reads.
_TOPIC, _NAMESPACE, _EVENT, _NONE = 0, 1, 2, 3
# Operators.
_PRESENT, _EQ, _NE, _RE = 0, 1, 2, 3
_OPS = {"?": _PRESENT, "==": _EQ, "!=": _NE, "~=": _RE}


class Envelope:
    """One event: when, in which namespace, what topic, and its payload (a plain dict)."""

    __slots__ = ("event", "namespace", "timestamp", "topic")

    def __init__(self, timestamp: int, namespace: str, topic: str,
                 event: Mapping[str, Any] | None = None) -> None:
        self.timestamp = timestamp
        self.namespace = namespace
        self.topic = topic
        # The payload is owned by the envelope once published: callers do not mutate it afterwards.
        self.event: dict[str, Any] = event if type(event) is dict else (dict(event) if event else {})

    def to_dict(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "namespace": self.namespace, "topic": self.topic,
                "event": self.event}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Envelope:
        return cls(int(d["timestamp"]), str(d["namespace"]), str(d["topic"]), d.get("event") or {})

    def __repr__(self) -> str:
        return f"Envelope({self.timestamp}, {self.namespace!r}, {self.topic!r}, {self.event!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Envelope) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _compile(flt: Any) -> list[list[tuple[int, int, str, Any, tuple[str, ...]]]] | None:
    """A pyctr.filters.Filter as a list of conjunctions (None: matches everything)."""
    from pyctr.filters import ALWAYS, All, Any_, Selector

    def sel(s: Selector) -> tuple[int, int, str, Any, tuple[str, ...]]:
        path = tuple(s.fieldpath)
        if path == ("topic",):
            kind = _TOPIC
        elif path == ("namespace",):
            kind = _NAMESPACE
        elif len(path) > 1 and path[0] == "event":
            kind = _EVENT
        else:
            kind = _NONE
        return (kind, _OPS[s.operator], s.value, s.regex, path[1:])

    def conj(f: Any) -> list[tuple[int, int, str, Any, tuple[str, ...]]]:
        if isinstance(f, Selector):
            return [sel(f)]
        if isinstance(f, All):
            out = []
            for g in f.filters:
                out.extend(conj(g))
            return out
        raise TypeError(f"cannot compile filter {f!r}")

    if flt is None or flt is ALWAYS:
        return None
    if isinstance(flt, Any_):
        return [conj(f) for f in flt.filters]
    return [conj(flt)]


def _field(env: Envelope, kind: int, path: tuple[str, ...]) -> tuple[str, bool]:
    if kind == _TOPIC:
        return env.topic, True
    if kind == _NAMESPACE:
        return env.namespace, True
    if kind == _EVENT:
        from pyctr.filters import dict_adaptor

        return dict_adaptor(env.event)(list(path))
    return "", False


class Matcher:
    """A compiled filter over envelopes."""

    def __init__(self, flt: Any = None) -> None:
        self._dnf = _compile(flt)

    def match(self, env: Envelope) -> bool:
        dnf = self._dnf
        if dnf is None:
            return True
        for conj in dnf:
            for kind, op, value, regex, path in conj:
                got, present = _field(env, kind, path)
                if op == _EQ:
                    ok = present and got == value
                elif op == _NE:
                    ok = got != value
                elif op == _PRESENT:
                    ok = present
                else:
                    ok = regex.search(got) is not None
                if not ok:
                    break
            else:
                return True
        return False


class Subscriber:
    """A bounded queue of envelopes for one subscriber.  When full, new events are dropped and counted;
    the next :meth:`get` returns an overflow envelope (topic ``/events/overflow``, ``{"dropped": N}``)
    before the queued events."""

    def __init__(self, matcher: Matcher, maxsize: int = 1024) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.matcher = matcher
        self.maxsize = maxsize
        self.dropped = 0
        self._reported = 0
        self._queue: deque[Envelope] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = False
        self._efd = -1
        self.closed = False

    def _offer(self, env: Envelope) -> bool:
        q = self._queue
        if len(q) >= self.maxsize:
            self.dropped += 1
            return False
        q.append(env)
        if self._efd >= 0 and len(q) == 1:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._efd, 1)
        if self._waiting:
            with self._cond:
                self._cond.notify()
        return True

    def _overflow(self) -> Envelope | None:
        if self.dropped != self._reported:
            n = self.dropped - self._reported
            self._reported = self.dropped
            return Envelope(time.time_ns(), "", OVERFLOW_TOPIC, {"dropped": n})
        return None

    def get_nowait(self) -> Envelope | None:
        ov = self._overflow()
        if ov is not None:
            return ov
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def get(self, timeout: float | None = None) -> Envelope | None:
        """The next envelope, waiting up to ``timeout`` seconds (None: forever); None on timeout/close."""
        env = self.get_nowait()
        if env is not None or self.closed:
            return env
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiting = True
            try:
                while not self._queue and self.dropped == self._reported and not self.closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                self._waiting = False
        return self.get_nowait()

    def drain(self, limit: int = 1 << 30) -> list[Envelope]:
        out: list[Envelope] = []
        ov = self._overflow()
        if ov is not None:
            out.append(ov)
        q = self._queue
        while q and len(out) < limit:
            out.append(q.popleft())
        return out

    def __len__(self) -> int:
        return len(self._queue)

    def fileno(self) -> int:
        """An eventfd that becomes readable when the queue goes non-empty (for selectors/asyncio).
        Read it (``os.eventfd_read``) before draining."""
        if self._efd < 0:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            if self._queue or self.dropped != self._reported:
                os.eventfd_write(self._efd, 1)
        return self._efd

    def close(self) -> None:
        self.closed = True
        with self._cond:
            self._cond.notify_all()
        if self._efd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._efd, 1)

    def release(self) -> None:
        """Close the eventfd (after the consumer stopped selecting on it)."""
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1


class Bus:
    """Fan-out of envelopes to subscribers whose matcher accepts them.  Never blocks a publisher."""

    def __init__(self) -> None:
        self._subs: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()
        self.published: dict[str, int] = {}
        self.delivered: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def subscribe(self, matcher: Matcher | None = None, maxsize: int = 1024) -> Subscriber:
        sub = Subscriber(matcher or Matcher(), maxsize)
        with self._lock:
            self._subs = (*self._subs, sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
        sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, namespace: str, topic: str, event: Mapping[str, Any] | None = None,
                timestamp: int = 0) -> Envelope:
        env = Envelope(timestamp or time.time_ns(), namespace, topic, event)
        self.forward(env)
        return env

    def forward(self, env: Envelope) -> int:
        """Deliver an existing envelope (keeps its timestamp and namespace); returns deliveries."""
        topic = env.topic
        self.published[topic] = self.published.get(topic, 0) + 1
        n = d = 0
        for sub in self._subs:
            if sub.matcher.match(env):
                if sub._offer(env):
                    n += 1
                else:
                    d += 1
        if n:
            self.delivered[topic] = self.delivered.get(topic, 0) + n
        if d:
            self.dropped[topic] = self.dropped.get(topic, 0) + d
        return n
