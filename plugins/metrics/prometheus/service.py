"""The ``pyctr.metrics.prometheus`` plugin instance: a private collector registry, rendering, the
HTTP endpoint's life cycle, and one container's statistics for ``pyctr tasks metrics``."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from pyctr import cgroups
from pyctr.errdefs import NotFound, PyctrError

from .collector import ContainerCollector, DaemonCollector, GuardedCollector, TaskRef, runtime_tasks
from .server import MetricsHTTPServer

log = logging.getLogger("pyctr.plugin.pyctr.metrics.prometheus")

_TASKS_TTL = 0.25  # one scrape lists the tasks once, for the container and the daemon collectors


class PrometheusMetrics:
    """What ``engine.plugin("metrics")`` returns.

    :param plugins: the core's plugin :class:`~pyctr.registry.Registry` (runtimes, metadata, events).
    :param container_metrics: serve per-container series (containerd's ``no_prometheus`` inverted).
    :param cgroup_root: where cgroups are mounted (tests use recorded trees).
    """

    def __init__(self, plugins: Any, *, container_metrics: bool = True,
                 cgroup_root: str = cgroups.CGROUP_ROOT) -> None:
        self._plugins = plugins
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()  # scrapes only: never taken by the RPC path
        self._tasks_at = 0.0
        self._tasks_cache: list[TaskRef] = []
        self._runtimes: list[Any] | None = None
        self._engine: Any = None
        self._extra: list[Any] = []
        self.server: MetricsHTTPServer | None = None
        self._cgroup_root = cgroup_root
        # the container families are rendered by the collector itself (render_bytes), not through
        # this registry: prometheus_client's generic renderer costs ten times as much per sample
        self.containers = ContainerCollector(self.tasks, cgroup_root) if container_metrics else None
        self.registry.register(DaemonCollector(
            events=lambda: self._plugins.events, containers=self._container_counts, tasks=self.tasks,
            plugins=self._plugin_statuses, container_collector=self.containers))

    # -- sources ---------------------------------------------------------------------------------

    def _runtime_instances(self) -> list[Any]:
        if self._runtimes is None:
            try:
                self._runtimes = list(self._plugins.get_all("runtime").values())
            except PyctrError:
                return []
        return self._runtimes

    def tasks(self) -> list[TaskRef]:
        """Every task of every runtime (cached for a quarter of a second)."""
        now = time.monotonic()
        if now - self._tasks_at > _TASKS_TTL:
            self._tasks_cache = runtime_tasks(self._runtime_instances())
            self._tasks_at = now
        return self._tasks_cache

    def _container_counts(self) -> dict[str, int]:
        db = self._plugins.get("metadata").db
        try:
            rows = db.query("SELECT ns, COUNT(*) FROM containers GROUP BY ns")
        except Exception:  # no containers table yet: nobody created a container
            return {}
        return {str(r[0]): int(r[1]) for r in rows}

    def _plugin_statuses(self) -> list[tuple[str, str, str]]:
        return [(s.registration.type, s.registration.id, s.status.value) for s in self._plugins.init_all()]

    # -- engine, collectors ----------------------------------------------------------------------

    def attach(self, engine: Any) -> None:
        """Register the collectors third-party plugins return from ``pyctr_metrics_collectors``
        (called once by the daemon, or by an embedded ``pyctr metrics``)."""
        if self._engine is not None:
            return
        self._engine = engine
        try:
            results = engine.pm.hook.pyctr_metrics_collectors(engine=engine)
        except Exception:
            log.warning("a pyctr_metrics_collectors hook failed", exc_info=True)
            return
        for group in results:
            for c in group or []:
                if not hasattr(c, "collect"):
                    log.warning("ignoring metrics collector %r: it has no collect()", c)
                    continue
                guarded = GuardedCollector(c)
                self._extra.append(guarded)
                self.registry.register(guarded)

    # -- outputs ---------------------------------------------------------------------------------

    def render(self) -> str:
        """Every family in the Prometheus text format (what ``/v1/metrics`` serves)."""
        return self.render_bytes().decode()

    def render_bytes(self) -> bytes:
        with self._lock:
            head = self.containers.exposition().encode() if self.containers is not None else b""
            return head + generate_latest(self.registry)

    def container_stats(self, ns: str, id: str) -> dict[str, Any]:
        """The current cgroup statistics of the task ``ns/id`` (:class:`~pyctr.cgroups.CgroupStats`
        as a dict).  NotFound when it has no task; FailedPrecondition when the task is stopped."""
        from pyctr.errdefs import FailedPrecondition

        self._tasks_at = 0.0
        for ref in self.tasks():
            if ref.namespace == ns and ref.id == id:
                if ref.status == "stopped":
                    raise FailedPrecondition(f"task {id!r} is stopped: no statistics")
                try:
                    st = cgroups.read(ref.cgroup, self._cgroup_root)
                except NotFound:
                    raise FailedPrecondition(f"task {id!r} has no cgroup any more (stopped)") from None
                return st.to_dict()
        raise NotFound(f"container {id!r} has no task in namespace {ns!r}")

    # -- HTTP ------------------------------------------------------------------------------------

    def start_server(self, address: str) -> tuple[str, int]:
        """Serve ``/v1/metrics`` on ``address`` (``host:port``; a bare port binds to loopback)."""
        if self.server is not None:
            return self.server.address
        srv = MetricsHTTPServer(self.render_bytes, address)
        srv.start()
        self.server = srv
        log.info("serving metrics on http://%s:%d/v1/metrics", *srv.address)
        return srv.address

    def stop_server(self) -> None:
        srv, self.server = self.server, None
        if srv is not None:
            srv.stop()

    def close(self) -> None:
        self.stop_server()
        if self.containers is not None:
            with self._lock:
                self.containers.reader.close()
