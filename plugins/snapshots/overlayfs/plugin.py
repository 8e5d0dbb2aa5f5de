"""Registers ``pyctr.snapshot.overlayfs`` (the default snapshotter)."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration, SkipPlugin


def _init(ctx: InitContext) -> Any:
    from .overlayfs import OverlaySnapshotter, check_overlay_support

    root = str(ctx.config.get("root_path") or ctx.root)
    if not _probed_before(ctx, root):
        why = check_overlay_support(root)
        if why:
            raise SkipPlugin(why)
        _remember_probe(ctx, root)
    return OverlaySnapshotter(
        root,
        mount_options=[str(o) for o in ctx.config["mount_options"]],
        sync_remove=bool(ctx.config["sync_remove"]),
        upperdir_label=bool(ctx.config["upperdir_label"]),
    )


def _probe_key(root: str) -> str:
    import os

    return f"{os.uname().release} {os.stat(root).st_dev}\n"


def _probed_before(ctx: InitContext, root: str) -> bool:
    """True when an overlay mount already worked for this root, on this kernel, since the state
    directory was made (it is on tmpfs: a reboot probes again).  Saves a test mount per CLI call."""
    try:
        return (ctx.state / "overlay-ok").read_text() == _probe_key(root)
    except OSError:
        return False


def _remember_probe(ctx: InitContext, root: str) -> None:
    import contextlib
    import os

    with contextlib.suppress(OSError):
        ctx.state.mkdir(parents=True, exist_ok=True, mode=0o711)
        tmp = ctx.state / f".overlay-ok.{os.getpid()}"
        tmp.write_text(_probe_key(root))
        os.replace(tmp, ctx.state / "overlay-ok")


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
