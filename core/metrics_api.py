"""Record the daemon's own figures for ``/v1/metrics``, from anywhere in pyctr, cheaply.

This module imports nothing heavy (no prometheus_client): any module may call it on a hot path.
The ``pyctr.metrics.prometheus`` plugin reads :func:`snapshot` at scrape time and renders it::

    from pyctr import metrics_api

    metrics_api.observe_pull(nbytes, seconds)      # one image pulled: bytes fetched, wall time
    metrics_api.observe_push(nbytes, seconds)
    metrics_api.observe_unpack(seconds)            # one image unpacked into a snapshotter
    metrics_api.observe_rpc("Client", "version", 0.0004, None)     # done by the daemon's RPC server
    metrics_api.observe_task_launch(seconds)       # create + start of a task

Figures are per process (the daemon's, or an embedded client's while it runs); they start at zero
with the process, as Prometheus counters do.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

#: Upper bounds (seconds) of RPC latency buckets.
RPC_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                  2.5, 5.0, 10.0, 30.0, 60.0)
#: Upper bounds (seconds) of pull, push, unpack and launch durations.
LONG_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                                   300.0, 600.0)


class Histogram:
    """Cumulative-free bucket counts (one per bound, plus +Inf), a count and a sum."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.buckets = list(self.buckets)
        h.count, h.sum = self.count, self.sum
        return h

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), ...]`` ending with ``("+Inf", count)``, as Prometheus wants."""
        out: list[tuple[str, int]] = []
        acc = 0
        for b, n in zip((*(repr(float(x)) for x in self.bounds), "+Inf"), self.buckets, strict=True):
            acc += n
            out.append((b, acc))
        return out


_lock = threading.Lock()
_rpc: dict[tuple[str, str], Histogram] = {}
_rpc_errors: dict[tuple[str, str, str], int] = {}
_bytes: dict[str, int] = {"pull": 0, "push": 0}
_durations: dict[str, Histogram] = {}
_oom_events: dict[tuple[str, str], int] = {}


def observe_rpc(service: str, method: str, seconds: float, error_code: str | None = None) -> None:
    """One RPC request served: its service (class) and method, latency, and error code if it failed."""
    key = (service, method)
    with _lock:
        h = _rpc.get(key)
        if h is None:
            h = _rpc[key] = Histogram(RPC_BUCKETS)
        h.observe(seconds)
        if error_code:
            ek = (service, method, error_code)
            _rpc_errors[ek] = _rpc_errors.get(ek, 0) + 1


def rpc_request_hook(target: str, seconds: float, error_code: str | None) -> None:
    """The daemon's :class:`~pyctr.rpc.server.RPCServer` ``request_hook``: ``target`` is
    ``"Class.method"`` (``"?"`` when the request was refused before a target was known)."""
    service, _, method = target.rpartition(".")
    observe_rpc(service or "?", method or target, seconds, error_code)


def _observe(kind: str, seconds: float) -> None:
    h = _durations.get(kind)
    if h is None:
        h = _durations[kind] = Histogram(LONG_BUCKETS)
    h.observe(seconds)


def observe_pull(nbytes: int, seconds: float) -> None:
    """One image pulled: bytes fetched from the registry and the pull's wall time."""
    with _lock:
        _bytes["pull"] += int(nbytes)
        _observe("pull", seconds)


def observe_push(nbytes: int, seconds: float) -> None:
    """One image pushed: bytes sent to the registry and the push's wall time."""
    with _lock:
        _bytes["push"] += int(nbytes)
        _observe("push", seconds)


def observe_unpack(seconds: float) -> None:
    """One image unpacked into a snapshotter."""
    with _lock:
        _observe("unpack", seconds)


def observe_task_launch(seconds: float) -> None:
    """One task launched (create and start)."""
    with _lock:
        _observe("launch", seconds)


def count_oom(namespace: str, container_id: str) -> None:
    """The shim reported an OOM kill (``/tasks/oom``) for ``namespace/container_id``."""
    key = (namespace, container_id)
    with _lock:
        _oom_events[key] = _oom_events.get(key, 0) + 1


def snapshot() -> dict[str, Any]:
    """A consistent copy of every figure (taken under the lock for microseconds)."""
    with _lock:
        return {
            "rpc": {k: h.copy() for k, h in _rpc.items()},
            "rpc_errors": dict(_rpc_errors),
            "bytes": dict(_bytes),
            "durations": {k: h.copy() for k, h in _durations.items()},
            "oom_events": dict(_oom_events),
        }


def reset() -> None:
    """Forget every figure (tests)."""
    with _lock:
        _rpc.clear()
        _rpc_errors.clear()
        _durations.clear()
        _oom_events.clear()
        _bytes.update(pull=0, push=0)
