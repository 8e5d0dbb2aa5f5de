"""``pyctr version``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("version")
    def version(ctx: typer.Context) -> None:
        """Print the client's version and, when a daemon answers, the server's."""
        import platform

        from .. import __version__
        from ._state import opts

        print("Client:")
        print(f"  Version:  {__version__}")
        print(f"  Python:   {platform.python_version()}")
        o = opts(ctx)
        if o.address is None and o._daemon_address() is None:
            return
        server = o.client().version()
        if server is None:
            return
        print()
        print("Server:")
        print(f"  Version:  {server.get('version', '?')}")
        print(f"  Protocol: {server.get('protocol', '?')}")
        print(f"  PID:      {server.get('pid', '?')}")
        print(f"  Root:     {server.get('root', '?')}")
        print(f"  State:    {server.get('state', '?')}")
