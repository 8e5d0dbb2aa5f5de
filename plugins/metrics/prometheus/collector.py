"""prometheus_client collectors that read their figures when scraped.

* :class:`ContainerCollector` -- one series per running task and figure, read from the task's cgroup
  at scrape time (so a stopped container's series are gone at the next scrape, and a daemon restart
  resets nothing: the kernel's counters are the source).  Names follow containerd's
  (``container_<name>_<unit>``, labels ``container_id`` and ``namespace``), the same on cgroup v1 and v2.
* :class:`DaemonCollector` -- the process's own figures: RPC requests, errors and latency, the event
  bus per topic, bytes and durations of pulls, pushes and unpacks, containers and tasks per namespace,
  plugin status.

Which tasks: every runtime plugin offering ``task_cgroups() -> list[dict]`` (keys ``namespace``,
``id``, ``cgroup``, ``status`` in ``created``/``running``/``stopped``; read from its state files, no
shim called: :meth:`pyctr.plugins.runtime.runc.manager.RuncRuntime.task_cgroups`).  A runtime
without it contributes no container series.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from pyctr import cgroups, metrics_api
from pyctr.cgroups import CgroupStats
from pyctr.errdefs import PyctrError

log = logging.getLogger("pyctr.plugin.pyctr.metrics.prometheus")

LABELS = ["container_id", "namespace"]
# one sample: (label text as rendered, label values, value)
_Row = tuple[str, tuple[str, ...], "float | int"]


@dataclass(frozen=True)
class TaskRef:
    """A task as the metrics see it: where its cgroup is and what state its files say it is in."""

    namespace: str
    id: str
    cgroup: str
    status: str  # created, running, paused, stopped


def runtime_tasks(runtimes: Iterable[Any]) -> list[TaskRef]:
    """Every task known to ``runtimes``, read from their state files (no shim is called)."""
    out: list[TaskRef] = []
    seen: set[tuple[str, str]] = set()
    for rt in runtimes:
        try:
            if not hasattr(rt, "task_cgroups"):
                continue
            refs = [TaskRef(str(d["namespace"]), str(d["id"]), str(d["cgroup"]),
                            str(d.get("status") or "running")) for d in rt.task_cgroups()]
        except Exception:
            log.warning("listing the tasks of runtime %r failed", rt, exc_info=True)
            continue
        for r in refs:
            if (r.namespace, r.id) not in seen:
                seen.add((r.namespace, r.id))
                out.append(r)
    return out


# (family name, help, CgroupStats attribute)
_SIMPLE: list[tuple[str, str, str]] = [
    ("container_cpu_total_nanoseconds", "The total CPU time used by the container", "cpu_usage_ns"),
    ("container_cpu_user_nanoseconds", "The CPU time used in user mode", "cpu_user_ns"),
    ("container_cpu_kernel_nanoseconds", "The CPU time used in kernel mode", "cpu_system_ns"),
    ("container_cpu_throttle_periods_total", "The number of CFS enforcement periods", "cpu_nr_periods"),
    ("container_cpu_throttled_periods_total", "The number of periods in which the container was throttled",
     "cpu_nr_throttled"),
    ("container_cpu_throttled_time_nanoseconds", "The total time the container was throttled",
     "cpu_throttled_ns"),
    ("container_memory_usage_bytes", "The memory used by the container (including page cache)",
     "memory_usage"),
    ("container_memory_usage_limit_bytes", "The memory limit of the container (absent when unlimited)",
     "memory_limit"),
    ("container_memory_usage_max_bytes", "The highest memory use recorded", "memory_max_usage"),
    ("container_memory_rss_bytes", "Anonymous memory (RSS)", "memory_rss"),
    ("container_memory_cache_bytes", "Page cache", "memory_cache"),
    ("container_memory_swap_usage_bytes", "Swap used", "memory_swap"),
    ("container_memory_mapped_file_bytes", "Memory-mapped files", "memory_mapped_file"),
    ("container_memory_dirty_bytes", "Dirty page cache", "memory_dirty"),
    ("container_memory_writeback_bytes", "Page cache under writeback", "memory_writeback"),
    ("container_memory_shmem_bytes", "Shared memory (tmpfs, shm)", "memory_shmem"),
    ("container_memory_pgfault_total", "Page faults", "memory_pgfault"),
    ("container_memory_pgmajfault_total", "Major page faults", "memory_pgmajfault"),
    ("container_pids_current", "The number of processes in the container", "pids_current"),
    ("container_pids_limit", "The process limit of the container (absent when unlimited)", "pids_limit"),
]
_OOM = ("container_memory_oom_total", "The number of processes of the container killed by the OOM killer")
_PER_CPU = ("container_per_cpu_nanoseconds", "The CPU time used by the container on each CPU (cgroup v1)")
_IO_BYTES = ("container_blkio_io_service_bytes_recursive_bytes", "Bytes read and written by the container")
_IO_OPS = ("container_blkio_io_serviced_recursive_total", "Read and write operations of the container")
_IO_LABELS = [*LABELS, "op", "device", "major", "minor"]


class ContainerCollector:
    """Per-container cgroup figures, read at every scrape.

    Use it as a prometheus_client collector (:meth:`collect`), or call :meth:`exposition` for the same
    families already in the text format (what ``/v1/metrics`` serves: a tenth of the rendering cost).
    The cgroup files stay open between scrapes (:class:`pyctr.cgroups.CgroupReader`); one scrape at
    a time (the plugin's lock).
    """

    def __init__(self, tasks: Callable[[], list[TaskRef]], root: str = cgroups.CGROUP_ROOT,
                 max_fds: int | None = None) -> None:
        self._tasks = tasks
        self.root = root
        self.reader = cgroups.CgroupReader(root, max_fds)
        self.last_duration = 0.0  # seconds the previous read_all took
        self.last_count = 0
        self.errors = 0
        self.frozen: set[tuple[str, str]] = set()  # (namespace, id) of paused tasks, by the last read_all

    def read_all(self) -> list[tuple[TaskRef, CgroupStats]]:
        """The statistics of every task that is not stopped and whose cgroup still holds a process."""
        t0 = time.perf_counter()
        version = cgroups.version(self.root)
        out: list[tuple[TaskRef, CgroupStats]] = []
        seen: list[str] = []
        frozen: set[tuple[str, str]] = set()
        for ref in self._tasks():
            if ref.status == "stopped":
                continue
            try:
                st = self.reader.read(ref.cgroup, version)
            except PyctrError:
                continue  # the cgroup is gone: the task has just been deleted
            except Exception:
                self.errors += 1
                log.warning("reading the cgroup of %s/%s failed", ref.namespace, ref.id, exc_info=True)
                continue
            seen.append(ref.cgroup)
            alive = (st.pids_current > 0 if st.pids_current is not None
                     else cgroups.populated(ref.cgroup, self.root, version))
            if alive:
                out.append((ref, st))
                if self.reader.frozen(ref.cgroup, version):
                    frozen.add((ref.namespace, ref.id))
        self.reader.retain(seen)
        self.frozen = frozen
        self.last_duration = time.perf_counter() - t0
        self.last_count = len(out)
        return out

    def _rows(self) -> list[tuple[str, str, list[str], list[_Row]]]:
        """``[(family, help, label names, rows), ...]`` for every family, in a fixed order; a row is
        ``(label text, label values, value)``."""
        stats = self.read_all()
        ooms = metrics_api.snapshot()["oom_events"]
        fams: list[tuple[str, str, list[str], list[_Row]]] = [(n, h, LABELS, []) for n, h, _ in _SIMPLE]
        attrs = [a for _, _, a in _SIMPLE]
        oom: list[_Row] = []
        per_cpu: list[_Row] = []
        io_bytes: list[_Row] = []
        io_ops: list[_Row] = []
        for ref, st in stats:
            lvals = (ref.id, ref.namespace)
            lv = f'container_id="{_esc(ref.id)}",namespace="{_esc(ref.namespace)}"'
            for (_, _, _, rows), attr in zip(fams, attrs, strict=True):
                v = getattr(st, attr)
                if v is not None:
                    rows.append((lv, lvals, v))
            # the cgroup's own count is restart-safe; the shim's notifications cover old kernels
            oom.append((lv, lvals, max(st.memory_oom_kills or 0, ooms.get((ref.namespace, ref.id), 0))))
            for cpu, ns in enumerate(st.cpu_per_cpu_ns):
                per_cpu.append((f'{lv},cpu="{cpu}"', (*lvals, str(cpu)), ns))
            for dev in st.io_devices:
                name = cgroups.device_name(dev.major, dev.minor)
                dv = (name, str(dev.major), str(dev.minor))
                dl = f'device="{_esc(name)}",major="{dev.major}",minor="{dev.minor}"'
                for op, nbytes, nops in (("Read", dev.read_bytes, dev.read_ops),
                                         ("Write", dev.write_bytes, dev.write_ops)):
                    io_bytes.append((f'{lv},op="{op}",{dl}', (*lvals, op, *dv), nbytes))
                    io_ops.append((f'{lv},op="{op}",{dl}', (*lvals, op, *dv), nops))
        return [*fams, (*_OOM, LABELS, oom), (*_PER_CPU, [*LABELS, "cpu"], per_cpu),
                (*_IO_BYTES, _IO_LABELS, io_bytes), (*_IO_OPS, _IO_LABELS, io_ops)]

    def exposition(self) -> str:
        """Every container family in the Prometheus text format (0.0.4)."""
        out: list[str] = []
        for name, help_, _, rows in self._rows():
            out.append(f"# HELP {name} {help_}\n# TYPE {name} gauge\n")
            out.extend(f"{name}{{{text}}} {v}\n" for text, _, v in rows)
        return "".join(out)

    def collect(self) -> Iterator[Metric]:
        for name, help_, labels, rows in self._rows():
            fam = GaugeMetricFamily(name, help_, labels=labels)
            for _, lvals, v in rows:
                fam.add_metric(list(lvals), v)
            yield fam


def _esc(v: str) -> str:
    """A label value escaped for the text format."""
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return v


def _hist(name: str, help_: str, labels: list[str], items: Iterable[tuple[list[str], metrics_api.Histogram]]
          ) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, help_, labels=labels)
    for lv, h in items:
        fam.add_metric(lv, h.cumulative(), h.sum)
    return fam


class DaemonCollector:
    """The process's own figures (see the module docstring)."""

    def __init__(self, *, events: Callable[[], Any], containers: Callable[[], dict[str, int]],
                 tasks: Callable[[], list[TaskRef]], plugins: Callable[[], list[tuple[str, str, str]]],
                 container_collector: ContainerCollector | None = None) -> None:
        self._events = events
        self._containers = containers
        self._tasks = tasks
        self._plugins = plugins
        self._cc = container_collector

    def collect(self) -> Iterator[Metric]:
        snap = metrics_api.snapshot()
        yield from self._rpc(snap)
        yield from self._events_families()
        yield from self._transfers(snap)
        yield from self._objects(snap)
        if self._cc is not None:
            g = GaugeMetricFamily("pyctr_metrics_container_read_seconds",
                                  "Time the previous scrape took to read every container's cgroup")
            g.add_metric([], self._cc.last_duration)
            yield g
            g = GaugeMetricFamily("pyctr_metrics_containers_read", "Containers read by the previous scrape")
            g.add_metric([], self._cc.last_count)
            yield g

    def _rpc(self, snap: dict[str, Any]) -> Iterator[Metric]:
        rpc: dict[tuple[str, str], metrics_api.Histogram] = snap["rpc"]
        req = CounterMetricFamily("pyctr_rpc_requests", "RPC requests served, per service and method",
                                  labels=["service", "method"])
        for (svc, meth), h in sorted(rpc.items()):
            req.add_metric([svc, meth], h.count)
        yield req
        err = CounterMetricFamily("pyctr_rpc_errors", "RPC requests that failed, per service, method and code",
                                  labels=["service", "method", "code"])
        for (svc, meth, code), n in sorted(snap["rpc_errors"].items()):
            err.add_metric([svc, meth, code], n)
        yield err
        yield _hist("pyctr_rpc_request_duration_seconds", "RPC request latency, per service and method",
                    ["service", "method"], ((list(k), h) for k, h in sorted(rpc.items())))

    def _events_families(self) -> Iterator[Metric]:
        try:
            ex = self._events()
            stats = ex.stats()
            subscribers = int(ex.subscribers)
        except Exception:
            log.debug("event bus statistics unavailable", exc_info=True)
            stats, subscribers = {}, 0
        for key, help_ in (("published", "Events published on the bus, per topic"),
                           ("delivered", "Events delivered to subscribers, per topic"),
                           ("dropped", "Events dropped on full subscriber queues, per topic")):
            fam = CounterMetricFamily(f"pyctr_events_{key}", help_, labels=["topic"])
            for topic, n in sorted((stats.get(key) or {}).items()):
                fam.add_metric([topic], n)
            yield fam
        g = GaugeMetricFamily("pyctr_events_subscribers", "Subscribers of the event bus")
        g.add_metric([], subscribers)
        yield g

    def _transfers(self, snap: dict[str, Any]) -> Iterator[Metric]:
        for kind, help_ in (("pull", "Bytes fetched by image pulls"), ("push", "Bytes sent by image pushes")):
            c = CounterMetricFamily(f"pyctr_{kind}_bytes", help_)
            c.add_metric([], snap["bytes"][kind])
            yield c
        durations: dict[str, metrics_api.Histogram] = snap["durations"]
        for kind, name, help_ in (
            ("pull", "pyctr_pull_duration_seconds", "Time to pull an image"),
            ("push", "pyctr_push_duration_seconds", "Time to push an image"),
            ("unpack", "pyctr_unpack_duration_seconds", "Time to unpack an image into a snapshotter"),
            ("launch", "pyctr_task_launch_duration_seconds",
             "Time to create and start a task (detached launches served by the daemon)"),
        ):
            h = durations.get(kind)
            yield _hist(name, help_, [], [([], h)] if h is not None else [])

    def _objects(self, snap: dict[str, Any]) -> Iterator[Metric]:
        g = GaugeMetricFamily("pyctr_containers", "Containers, per namespace", labels=["namespace"])
        try:
            counts = self._containers()
        except Exception:
            log.debug("container counts unavailable", exc_info=True)
            counts = {}
        for ns, n in sorted(counts.items()):
            g.add_metric([ns], n)
        yield g
        g = GaugeMetricFamily("pyctr_tasks", "Tasks, per namespace and status", labels=["namespace", "status"])
        by: dict[tuple[str, str], int] = {}
        frozen = self._cc.frozen if self._cc is not None else set()
        with contextlib.suppress(Exception):
            for r in self._tasks():
                status = "paused" if r.status == "running" and (r.namespace, r.id) in frozen else r.status
                by[(r.namespace, status)] = by.get((r.namespace, status), 0) + 1
        for (ns, status), n in sorted(by.items()):
            g.add_metric([ns, status], n)
        yield g
        c = CounterMetricFamily("pyctr_tasks_oom_events", "OOM kills reported by shims, per namespace",
                                labels=["namespace"])
        per_ns: dict[str, int] = {}
        for (ns, _), n in snap["oom_events"].items():
            per_ns[ns] = per_ns.get(ns, 0) + n
        for ns, n in sorted(per_ns.items()):
            c.add_metric([ns], n)
        yield c
        g = GaugeMetricFamily("pyctr_plugin_status", "Plugins, by type, id and status (value 1)",
                              labels=["type", "id", "status"])
        with contextlib.suppress(Exception):
            for type_, pid, status in self._plugins():
                g.add_metric([type_, pid, status], 1)
        yield g


class GuardedCollector:
    """A third-party collector whose failure costs only its own families, never the scrape."""

    def __init__(self, inner: Any, origin: str = "") -> None:
        self.inner = inner
        self.origin = origin or type(inner).__name__

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self.inner.collect())
        except Exception:
            log.warning("metrics collector %s failed", self.origin, exc_info=True)
            return
        yield from families
