"""Registers ``pyctr.snapshot.native``: copy-based snapshots that work on any filesystem."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration


def _init(ctx: InitContext) -> Any:
    from .native import NativeSnapshotter

    root = str(ctx.config.get("root_path") or ctx.root)
    return NativeSnapshotter(root, sync_remove=bool(ctx.config["sync_remove"]))


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.SNAPSHOT,
            id="pyctr.snapshot.native",
            init=_init,
            config={"root_path": "", "sync_remove": True},
            description="Snapshots as full copies of their parents; works on any filesystem.",
        )
    ]
