"""Registers ``pyctr.content.local``: the content-addressed blob store on the local filesystem."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration


def _init(ctx: InitContext) -> Any:
    from .store import LocalStore

    return LocalStore(ctx.root, checkpoint_bytes=int(ctx.config["checkpoint_bytes"]))


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.CONTENT,
            id="pyctr.content.local",
            init=_init,
            config={"checkpoint_bytes": 64 << 20},
            description="Content-addressed blobs (sha256) with resumable, verified, atomic ingests.",
        )
    ]
