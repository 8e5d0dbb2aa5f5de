"""``pyctr pull``: a top-level shortcut for ``pyctr images pull``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from . import images_remote

    sub = typer.Typer()
    images_remote.register(sub)
    for info in sub.registered_commands:
        if info.name == "pull":
            app.command("pull", help="Pull an image (same as images pull).")(info.callback)  # type: ignore[arg-type]
