"""Registers ``pyctr.runtime.runc``: containers run by runc under pyctr's shims."""

from __future__ import annotations

import shutil
from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration, SkipPlugin


def _init(ctx: InitContext) -> Any:
    binary = str(ctx.config["runc_binary"])
    if shutil.which(binary) is None:
        raise SkipPlugin(f"runc binary {binary!r} not found on PATH (apt-get install runc)")
    from .manager import RuncRuntime

    return RuncRuntime(
        ctx.state,
        runc_binary=binary,
        runc_root=str(ctx.config["runc_root"]),
        cgroup_parent=str(ctx.config["cgroup_parent"]),
        shim_debug=bool(ctx.config["shim_debug"]),
        zygote=bool(ctx.config["shim_zygote"]),
        stdio_copy=bool(ctx.config["stdio_copy"]),
        default_group=str(ctx.config["default_group"]),
        shim_pool_size=int(ctx.config["shim_pool_size"]),
    )


def forwarder(exchange: Any) -> Any:
    """A runtime publisher that forwards shim events to ``exchange`` (namespace and time kept)."""
    from pyctr.runtime import RuntimeEvent

    def forward(ev: RuntimeEvent) -> None:
        exchange.forward({"timestamp": int(ev.timestamp * 1e9), "namespace": ev.namespace,
                          "topic": ev.topic, "event": dict(ev.event)})

    return forward


@hookimpl
def pyctr_daemon_started(engine: Any) -> None:
    """In ``pyctrd`` the shims' events (and the exits found at start-up) reach the event exchange.

    Only the daemon listens: one-shot CLI processes would take the shims' event address from it.
    """
    from pyctr.errdefs import PyctrError

    try:
        rt = engine.registry.get_by_id("pyctr.runtime.runc")
    except PyctrError:
        return
    rt.set_publisher(forwarder(engine.events))


@hookimpl
def pyctr_daemon_stopping(engine: Any) -> None:
    from pyctr.errdefs import PyctrError

    try:
        rt = engine.registry.get_by_id("pyctr.runtime.runc")
    except PyctrError:
        return
    rt.set_publisher(None)


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.RUNTIME,
            id="pyctr.runtime.runc",
            init=_init,
            # stdio_copy: the shim copies output even when it could hand the destination (a FIFO, a
            # file, the caller's fd) to the container, as containerd's shim always does.
            # shim_zygote: shims are forked from a warm parent (fast start, shared memory).
            # shim_pool_size: tasks created without a group (and no default_group) share pooled shims of
            # at most this many live tasks each, per namespace (~0.1 MB per task instead of ~1.9 MB for a
            # shim of its own); a shim that dies takes at most that many tasks with it.  1 (or 0): one
            # shim per task, as containerd.  An explicit group (batch --detach, pods) is not pooled.
            # default_group: a name puts every task of a namespace created without a group into that
            # one shim (no bound); "" leaves them to the pools.
            config={"runc_binary": "runc", "runc_root": "", "cgroup_parent": "/pyctr", "shim_debug": False,
                    "shim_zygote": True, "stdio_copy": False, "default_group": "", "shim_pool_size": 32},
            platforms=("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x",
                       "linux/riscv64", "linux/386"),
            description="Tasks run by runc, supervised by pyctr shims (grouping, restart-safe).",
        )
    ]
