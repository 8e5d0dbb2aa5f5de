"""When to collect garbage: containerd's GC scheduler, plus a timer so expired leases do not linger.

:class:`GCScheduler` wraps a ``collect()`` function (one full collection, see
:func:`pyctr.metadata.gc.collect`) and decides when to call it:

* :meth:`GCScheduler.collect` runs one now, on the caller's thread (``pyctr gc``, synchronous deletes);
* :meth:`GCScheduler.mutated` is hooked onto the metadata database: deletions (and, past
  ``mutation_threshold``, other changes) make the store *dirty*; ``deletion_threshold`` deletions
  (when > 0) trigger a collection at once;
* once :meth:`GCScheduler.start` has started the background thread (the daemon does; one-shot CLI
  calls never do), a dirty store is collected after a pause derived from ``pause_threshold`` (the
  share of time the collector may hold the write lock: interval = avg/threshold - avg, avg >= 5 ms),
  a :meth:`GCScheduler.schedule` request after ``schedule_delay_ms``, the first collection
  ``startup_delay_ms`` after start, one as soon as the earliest expiry a collection saw falls due (a
  lease's, an ingest's, a ``containerd.io/gc.expire`` label's), and one every ``interval`` seconds
  regardless (containerd has no such timer, so an expired lease lingers on an idle containerd --
  containerd/containerd#6294);
* without the thread, a store left dirty is collected by :meth:`GCScheduler.close` when
  ``collect_on_close`` is set, so ``pyctr images rm`` frees space before the command exits.

Collections never overlap: a lock serialises them (and SQLite's write lock serialises processes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pyctr.errdefs import DeadlineExceeded, Internal, InvalidArgument
from pyctr.metadata.gc import GCResult

log = logging.getLogger("pyctr.gc.scheduler")

DEFAULTS: dict[str, Any] = {
    "pause_threshold": 0.02,
    "deletion_threshold": 0,
    "mutation_threshold": 100,
    "schedule_delay_ms": 0,
    "startup_delay_ms": 100,
    "interval": 300.0,
    "collect_on_close": True,
    "orphan_grace": 0.0,
}

_MIN_AVG = 0.005  # seconds: containerd's floor for the average collection time


class GCScheduler:
    def __init__(self, collect_fn: Callable[..., GCResult], config: Mapping[str, Any] | None = None) -> None:
        cfg = dict(DEFAULTS)
        cfg.update(config or {})
        pause = float(cfg["pause_threshold"])
        if pause <= 0:
            raise InvalidArgument(f"gc pause_threshold must be > 0, not {pause}")
        self.pause_threshold = min(pause, 0.5)
        self.deletion_threshold = int(cfg["deletion_threshold"])
        self.mutation_threshold = int(cfg["mutation_threshold"])
        self.schedule_delay = max(0.0, float(cfg["schedule_delay_ms"]) / 1000)
        self.startup_delay = max(0.0, float(cfg["startup_delay_ms"]) / 1000)
        self.interval = float(cfg["interval"])
        self.collect_on_close = bool(cfg["collect_on_close"])
        self._collect_fn = collect_fn
        self._run_lock = threading.Lock()  # one collection at a time
        self._cond = threading.Condition()
        self._deletions = 0
        self._mutations = 0
        self._dirty = False
        self._trigger_at: float | None = None
        self._next_periodic: float | None = None
        self._expiry_at: float | None = None  # when the earliest lease/ingest/label expiry falls
        self._last_end = time.monotonic()
        self._avg = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._started_once = False  # a daemon's scheduler: close() leaves pending work to the next start
        self._runs_started = 0
        self._runs_done = 0
        self._last_failed = False
        #: Statistics: number of collections run, failed (raised) and with errors; the last result.
        self.collections = 0
        self.failures = 0
        self.with_errors = 0
        self.seconds_total = 0.0
        self.removed_total: dict[str, int] = {}
        self.last_result: GCResult | None = None
        self.last_error: str = ""

    # -- triggers ------------------------------------------------------------------------------

    def mutated(self, kind: str) -> None:
        """The metadata database's mutation hook: ``"delete"`` or another change."""
        with self._cond:
            if kind == "delete":
                self._deletions += 1
                self._dirty = True
                if self.deletion_threshold > 0 and self._deletions >= self.deletion_threshold:
                    self._trigger_at = time.monotonic()
            else:
                self._mutations += 1
                if self._mutations >= self.mutation_threshold:
                    self._dirty = True
            self._cond.notify_all()

    def schedule(self) -> None:
        """Ask for a collection soon (after ``schedule_delay_ms``): on the background thread when it
        runs, otherwise when this scheduler is closed."""
        with self._cond:
            self._dirty = True
            at = time.monotonic() + self.schedule_delay
            if self._trigger_at is None or at < self._trigger_at:
                self._trigger_at = at
            self._cond.notify_all()

    def schedule_and_wait(self, timeout: float | None = None) -> GCResult:
        """A collection that starts after this call, and its result (synchronous deletes use this)."""
        if not self.running:
            return self.collect()
        with self._cond:
            # a collection already under way may have read the store before this call: wait for the
            # next one to start (runs are serialised, so they also finish in order)
            target = self._runs_started + 1
            self._trigger_at = time.monotonic() + self.schedule_delay
            self._dirty = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._runs_done >= target or self._stopping, timeout=timeout)
            if not done:
                raise DeadlineExceeded(f"no garbage collection finished within {timeout} s")
            if self._runs_done >= target:
                if self._last_failed:
                    raise Internal(f"garbage collection failed: {self.last_error}")
                assert self.last_result is not None
                return self.last_result
        return self.collect()  # the thread is stopping: run it here

    # -- running -------------------------------------------------------------------------------

    def collect(self, *, dry_run: bool = False) -> GCResult:
        """Run one collection now, on this thread, and return what it removed (with ``dry_run``: what
        it would remove; nothing is removed and the scheduler's state is left alone)."""
        if dry_run:
            with self._run_lock:
                return self._collect_fn(dry_run=True)
        with self._run_lock:
            with self._cond:
                self._deletions = self._mutations = 0
                self._dirty = False
                self._trigger_at = None
                self._expiry_at = None
                self._runs_started += 1
                run = self._runs_started
            start = time.monotonic()
            try:
                result = self._collect_fn()
            except BaseException as e:
                with self._cond:
                    self._runs_done, self._last_failed = run, True
                    self.failures += 1
                    self.last_error = f"{type(e).__name__}: {e}"
                    self._last_end = time.monotonic()
                    if self.interval > 0:  # retried at the next tick, not in a tight loop
                        self._next_periodic = self._last_end + self.interval
                    self._cond.notify_all()
                raise
            took = time.monotonic() - start
            with self._cond:
                self._runs_done, self._last_failed = run, False
                self.collections += 1
                self.with_errors += bool(result.errors)
                self.seconds_total += took
                for kind, _, _ in result.records:
                    self.removed_total[kind] = self.removed_total.get(kind, 0) + 1
                for kind, _ in result.backend:
                    key = f"{kind} (backend)"
                    self.removed_total[key] = self.removed_total.get(key, 0) + 1
                self.last_result = result
                self._avg = took if self.collections == 1 else 0.8 * self._avg + 0.2 * took
                self._last_end = time.monotonic()
                if self.interval > 0:
                    self._next_periodic = self._last_end + self.interval
                if result.next_expiry is not None:  # collect again as soon as something expires
                    wait = max(0.0, (result.next_expiry - time.time_ns()) / 1e9)
                    self._expiry_at = self._last_end + wait + 0.01
                self._cond.notify_all()
            for err in result.errors:
                log.warning("gc: %s", err)
            return result

    @property
    def pause_interval(self) -> float:
        """The least time between two collections the dirty store triggers."""
        avg = max(self._avg, _MIN_AVG)
        return avg / self.pause_threshold - avg

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        with self._cond:
            if self.running or self._closed:
                return
            self._stopping = False
            self._started_once = True
            now = time.monotonic()
            self._trigger_at = now + self.startup_delay
            if self.interval > 0:
                self._next_periodic = now + self.interval
            self._thread = threading.Thread(target=self._loop, name="pyctr-gc", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def close(self) -> None:
        """Stop the thread; in one-shot use (never started), collect what deletions left behind
        (``collect_on_close``)."""
        self.stop()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = self._dirty or self._trigger_at is not None
        if pending and not self._started_once and self.collect_on_close:
            try:
                self.collect()
            except Exception:
                log.warning("gc: collection at close failed", exc_info=True)

    def _due(self, now: float) -> float | None:
        """When the next collection is due (monotonic seconds), or None for "only when woken"."""
        times: list[float] = []
        if self._trigger_at is not None:
            times.append(self._trigger_at)
        if self._dirty:
            times.append(self._last_end + self.pause_interval)
        if self._next_periodic is not None:
            times.append(self._next_periodic)
        if self._expiry_at is not None:
            times.append(self._expiry_at)
        return min(times) if times else None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    due = self._due(now)
                    if due is not None and due <= now:
                        break
                    self._cond.wait(None if due is None else due - now)
                if self._stopping:
                    return
            try:
                self.collect()  # resets the triggers it answers as it starts
            except Exception:
                log.warning("gc: collection failed", exc_info=True)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "collections": self.collections,
                "failures": self.failures,
                "running": self.running,
                "dirty": self._dirty,
                "deletions": self._deletions,
                "mutations": self._mutations,
                "average_seconds": self._avg,
                "last_error": self.last_error,
                "last_result": self.last_result.to_dict() if self.last_result else None,
            }
