"""Registers ``pyctr.diff.walking``: applies layers (tar, gzip, zstd) and computes them by walking."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration


def _init(ctx: InitContext) -> Any:
    from .differ import WalkingDiffer

    limit = int(ctx.config["max_uncompressed_size"])
    return WalkingDiffer(
        str(ctx.state / "tmp"),
        max_uncompressed=limit if limit > 0 else None,
        gzip_level=int(ctx.config["gzip_level"]),
    )


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.DIFF,
            id="pyctr.diff.walking",
            init=_init,
            # max_uncompressed_size: refuse layers larger than this uncompressed (bytes; 0: no limit)
            config={"max_uncompressed_size": 64 << 30, "gzip_level": 1},
            description="Applies tar, tar+gzip and tar+zstd layers onto mounts; computes layers from mounts.",
        )
    ]
