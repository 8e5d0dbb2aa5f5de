"""``pyctr config default|dump``, as ``containerd config default|dump``."""

from __future__ import annotations

import typer

from ._state import opts

app = typer.Typer(no_args_is_help=True)


@app.command("default")
def default(ctx: typer.Context) -> None:
    """Print the full default configuration (every installed plugin's section) as TOML."""
    from ..config import Config, dump_default
    from ..registry import Registry, make_plugin_manager

    reg = Registry(Config(), make_plugin_manager())
    reg.load_from_plugin_manager()
    print(dump_default(reg.registrations()))


@app.command("dump")
def dump(ctx: typer.Context) -> None:
    """Print the configuration in effect: the file (--config) merged over the defaults, --root and
    --state applied.  An unknown key or a wrongly typed value is an error naming it."""
    from ..config import dump as dump_config

    client = opts(ctx).client()
    print(dump_config(client.config, client.engine.registry.registrations()))
