"""Registers ``pyctr.snapshot.overlayfs`` (the default snapshotter)."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration, SkipPlugin


def _init(ctx: InitContext) -> Any:
    from .overlayfs import OverlaySnapshotter, check_overlay_support

    root = str(ctx.config.get("root_path") or ctx.root)
    why = check_overlay_support(root)
    if why:
        raise SkipPlugin(why)
    return OverlaySnapshotter(
        root,
        mount_options=[str(o) for o in ctx.config["mount_options"]],
        sync_remove=bool(ctx.config["sync_remove"]),
        upperdir_label=bool(ctx.config["upperdir_label"]),
    )


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.SNAPSHOT,
            id="pyctr.snapshot.overlayfs",
            init=_init,
            config={"root_path": "", "mount_options": [], "sync_remove": True, "upperdir_label": False},
            description="Snapshots as overlayfs layers (lower directories, upper and work directories).",
        )
    ]
