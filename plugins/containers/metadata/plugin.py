"""Registers ``pyctr.containers.metadata``: the containers service (records, snapshots, tasks)."""

from __future__ import annotations

from typing import Any

from pyctr.hookspecs import hookimpl
from pyctr.registry import InitContext, PluginType, Registration


def _init(ctx: InitContext) -> Any:
    from .service import ContainerService

    return ContainerService(ctx.registry, root=ctx.root, state=ctx.state, config=ctx.config)


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.SERVICE,
            id="pyctr.containers.metadata",
            init=_init,
            requires=(PluginType.METADATA,),
            config={},
            description="Containers: records per namespace, their snapshots, and their tasks.",
        )
    ]
