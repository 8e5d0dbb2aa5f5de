"""Registers ``pyctr.images.metadata``: image records, archive import/export and unpack."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration


def _init(ctx: InitContext) -> Any:
    from .service import ImageService

    return ImageService(
        ctx.get(PluginType.METADATA),
        ctx.registry,
        root=ctx.root,
        state=ctx.state,
        config=ctx.config,
    )


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.IMAGES,
            id="pyctr.images.metadata",
            init=_init,
            requires=(PluginType.METADATA,),
            config={
                # a descriptor claiming more than this is refused before any byte is read
                "max_blob_size": 64 << 30,
                # index, manifest and config JSON read into memory (containerd: 20 MiB on import)
                "max_json_size": 20 << 20,
                # snapshotter for unpack when none is named ("" = the namespace's or the default one)
                "snapshotter": "",
            },
            description="Image records per namespace; OCI/docker archive import and export; unpack.",
        )
    ]
