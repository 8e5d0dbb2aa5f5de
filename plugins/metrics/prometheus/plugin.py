"""Registers ``pyctr.metrics.prometheus`` (type ``metrics``) and its daemon hooks.

In ``pyctrd``: when ``[metrics] address`` (or ``--metrics-address``) is set, ``/v1/metrics`` is served
there from the moment the daemon has started until it stops; the daemon's RPC server reports every
request to :func:`pyctr.metrics_api.rpc_request_hook`.  ``pyctr metrics`` prints the same text.
"""

from __future__ import annotations

import logging
from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration

PLUGIN_ID = "pyctr.metrics.prometheus"
log = logging.getLogger(f"pyctr.plugin.{PLUGIN_ID}")


def _init(ctx: InitContext) -> Any:
    from .service import PrometheusMetrics

    return PrometheusMetrics(ctx.registry, container_metrics=bool(ctx.config["container_metrics"]),
                             cgroup_root=str(ctx.config["cgroup_root"]))


def _instance(engine: Any) -> Any:
    from pyctr.errdefs import PyctrError

    try:
        return engine.registry.get_by_id(PLUGIN_ID)
    except PyctrError as e:
        log.info("metrics are off: %s", e)
        return None


#: RPC targets whose latency is also a task launch (create + start in one request).
LAUNCH_TARGETS = frozenset({"ContainerService.start_task"})


def request_hook(target: str, seconds: float, error_code: str | None) -> None:
    """The daemon's RPC ``request_hook``: every request counted per service and method; a successful
    ``ContainerService.start_task`` is also a task launch."""
    from pyctr import metrics_api

    metrics_api.rpc_request_hook(target, seconds, error_code)
    if error_code is None and target in LAUNCH_TARGETS:
        metrics_api.observe_task_launch(seconds)


@hookimpl
def pyctr_daemon_started(engine: Any) -> None:
    server = getattr(engine, "rpc_server", None)
    if server is not None and getattr(server, "request_hook", None) is None:
        server.request_hook = request_hook
    inst = _instance(engine)
    if inst is None:
        return
    inst.attach(engine)
    address = str((getattr(engine.config, "metrics", None) or {}).get("address") or "")
    if not address:
        return
    try:
        inst.start_server(address)
    except Exception as e:  # the daemon keeps serving its API; the operator sees why metrics are not
        log.error("metrics endpoint not started: %s", e)


@hookimpl
def pyctr_daemon_stopping(engine: Any) -> None:
    inst = _instance(engine)
    if inst is not None:
        inst.stop_server()


@hookimpl
def pyctr_event_published(envelope: Any) -> None:
    if envelope.topic == "/tasks/oom":
        from pyctr import metrics_api

        metrics_api.count_oom(envelope.namespace, str((envelope.event or {}).get("container_id", "")))


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.METRICS,
            id=PLUGIN_ID,
            init=_init,
            # container_metrics = false: no per-container series (containerd's no_prometheus);
            # cgroup_root: where cgroups are mounted.
            config={"container_metrics": True, "cgroup_root": "/sys/fs/cgroup"},
            description="Prometheus metrics at /v1/metrics ([metrics] address): containers' cgroups, RPC, "
                        "events, transfers, tasks, plugins.",
        )
    ]
