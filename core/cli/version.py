"""``pyctr version``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("version")
    def version(ctx: typer.Context) -> None:
        """Print the client's version (and the server's, when a daemon answers)."""
        import platform

        from .. import __version__

        print("Client:")
        print(f"  Version:  {__version__}")
        print(f"  Python:   {platform.python_version()}")
