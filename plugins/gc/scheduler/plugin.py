"""Registers ``pyctr.gc.scheduler``: the garbage collector's scheduler (type ``gc``).

The instance is a :class:`~pyctr.plugins.gc.scheduler.scheduler.GCScheduler`: ``collect()`` runs a
collection now, ``schedule()`` asks for one soon, ``start()`` (called by the daemon) starts the timer.
Backends are looked up when a collection runs: the ``content`` plugin and every ``snapshot`` plugin
that loaded (a skipped snapshotter keeps its backend snapshots until it loads again).
"""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration

_CONFIG: dict[str, Any] = {
    "pause_threshold": 0.02,
    "deletion_threshold": 0,
    "mutation_threshold": 100,
    "schedule_delay_ms": 0,
    "startup_delay_ms": 100,
    "interval": 300.0,
    "collect_on_close": True,
    "orphan_grace": 0.0,
}


def _init(ctx: InitContext) -> Any:
    import logging

    from pyctr.errdefs import PyctrError
    from pyctr.metadata.gc import GCResult, collect

    from .scheduler import GCScheduler

    log = logging.getLogger("pyctr.gc.scheduler")
    store = ctx.get(PluginType.METADATA)
    grace = float(ctx.config["orphan_grace"])

    def run(dry_run: bool = False) -> GCResult:
        try:
            content = ctx.get(PluginType.CONTENT)
        except PyctrError as e:
            log.info("gc: no content backend (%s); blobs are left alone", e)
            content = None
        snapshotters = ctx.get_all(PluginType.SNAPSHOT)
        result = collect(store.db, content, snapshotters, orphan_grace=grace, dry_run=dry_run)
        if not dry_run:
            _publish(store, result)
        return result

    sched = GCScheduler(run, ctx.config)
    store.db.add_mutation_hook(sched.mutated)
    return sched


def _publish(store: Any, result: Any) -> None:
    """containerd's events for what a collection removed: ``/snapshot/remove`` and, for expired images,
    ``/images/delete``, in the object's namespace."""
    import logging

    publish = getattr(store, "publish", None)
    if publish is None:
        return
    for kind, ns, key in result.records:
        try:
            if kind == "snapshot":
                sn, _, name = key.partition("/")
                publish(ns, "/snapshot/remove", {"key": name, "snapshotter": sn})
            elif kind == "image":
                publish(ns, "/images/delete", {"name": key})
        except Exception:
            logging.getLogger("pyctr.gc.scheduler").debug("cannot publish gc event", exc_info=True)


class _Metrics:
    """prometheus_client collector: collections by outcome, time spent, objects removed by kind."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        try:
            sched = self._engine.registry.get_by_id("pyctr.gc.scheduler")
        except Exception:
            return
        runs = CounterMetricFamily("pyctr_gc_collections", "Garbage collections, by outcome", labels=["status"])
        runs.add_metric(["ok"], sched.collections - sched.with_errors)
        runs.add_metric(["errors"], sched.with_errors)  # finished, but some objects could not be removed
        runs.add_metric(["failed"], sched.failures)
        yield runs
        yield CounterMetricFamily("pyctr_gc_seconds", "Time spent collecting garbage", value=sched.seconds_total)
        removed = CounterMetricFamily("pyctr_gc_removed", "Objects the collector removed, by kind",
                                      labels=["kind"])
        for kind, n in sorted(sched.removed_total.items()):
            removed.add_metric([kind], n)
        yield removed


@hookimpl
def pyctr_metrics_collectors(engine: Any) -> list[Any]:
    return [_Metrics(engine)]


@hookimpl
def pyctr_daemon_started(engine: Any) -> None:
    """The daemon runs the scheduler's timer; one-shot CLI calls never start it."""
    engine.registry.get_by_id("pyctr.gc.scheduler").start()


@hookimpl
def pyctr_daemon_stopping(engine: Any) -> None:
    from pyctr.errdefs import PyctrError

    try:
        sched = engine.registry.get_by_id("pyctr.gc.scheduler")
    except PyctrError:
        return
    sched.stop()


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.GC,
            id="pyctr.gc.scheduler",
            init=_init,
            requires=(PluginType.METADATA,),
            config=dict(_CONFIG),
            description="Garbage collection of unreferenced content and snapshots: after deletes, on demand "
                        "(pyctr gc) and on a timer.",
        )
    ]
