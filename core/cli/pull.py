"""``pyctr pull``: a top-level shortcut for ``pyctr images pull``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from .images_remote import pull

    app.command("pull", help="Pull an image from a registry (same as images pull).")(pull)
