"""Registers ``example.snapshot.dirs``.  pyctr imports this module at start-up, so it stays small."""

from __future__ import annotations

from typing import Any

from pyctr import hookimpl
from pyctr.registry import InitContext, PluginType, Registration


def _init(ctx: InitContext) -> Any:
    from .snapshotter import DirSnapshotter

    ctx.root.mkdir(parents=True, exist_ok=True)
    # Leave a trace of the configuration this plugin was given (the tests read it).
    (ctx.root / "initialised").write_text(f"{ctx.config['greeting']}\n")
    return DirSnapshotter(ctx.root)


@hookimpl
def pyctr_plugin_registrations() -> list[Registration]:
    return [
        Registration(
            type=PluginType.SNAPSHOT,
            id="example.snapshot.dirs",
            init=_init,
            config={"greeting": "hello"},
            platforms=("linux/*",),
            description="Example third-party snapshotter: each snapshot is a full directory copy.",
        )
    ]
