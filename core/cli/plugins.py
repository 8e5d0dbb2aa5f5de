"""``pyctr plugins ls``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._state import opts
from .output import table

app = typer.Typer(no_args_is_help=True)


@app.command("ls")
def ls(
    ctx: typer.Context,
    detailed: Annotated[bool, typer.Option(
        "--detailed", "-d", help="Show requirements, config and errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print plugin ids only.")] = False,
) -> None:
    """List every plugin with its TYPE, ID, PLATFORMS and STATUS (ok, skipped, error, disabled)."""
    statuses = opts(ctx).client().engine.plugin_statuses()
    if quiet:
        for st in statuses:
            print(st.registration.id)
        return
    if not detailed:
        table(
            ["TYPE", "ID", "PLATFORMS", "STATUS"],
            [(s.registration.type, s.registration.id, ",".join(s.registration.platform_list()),
              s.status.value) for s in statuses],
        )
        return
    for s in statuses:
        r = s.registration
        print(f"Type:       {r.type}")
        print(f"ID:         {r.id}")
        if r.description:
            print(f"About:      {r.description}")
        print(f"Platforms:  {','.join(r.platform_list())}")
        print(f"Requires:   {', '.join(r.requires) or '-'}")
        print(f"Status:     {s.status.value}")
        if s.message:
            print(f"Message:    {s.message}")
        if s.config:
            print("Config:")
            for k, v in s.config.items():
                print(f"  {k} = {v!r}")
        print()
