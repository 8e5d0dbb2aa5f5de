"""Registers ``pyctr.metadata.sqlite``: the embedded SQLite metadata store."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration


def _init(ctx: InitContext) -> Any:
    from pyctr.metadata.db import MetadataDB
    from pyctr.metadata.store import MetadataStore

    ctx.root.mkdir(parents=True, exist_ok=True, mode=0o711)
    db = MetadataDB(ctx.root / "meta.db", synchronous=str(ctx.config["synchronous"]))
    return MetadataStore(db, ctx.registry)


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.METADATA,
            id="pyctr.metadata.sqlite",
            init=_init,
            requires=(PluginType.CONTENT,),
            config={"synchronous": "NORMAL"},
            description="Namespaces, labels, images, containers, snapshot and content records, leases (SQLite WAL).",
        )
    ]
