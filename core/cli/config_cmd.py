"""``pyctr config default|dump``."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("default")
def default(ctx: typer.Context) -> None:
    """Print the full default configuration (every installed plugin's section) as TOML."""
    from ..config import Config, dump_default
    from ..registry import Registry, make_plugin_manager

    reg = Registry(Config(), make_plugin_manager())
    reg.load_from_plugin_manager()
    print(dump_default(reg.registrations()))
