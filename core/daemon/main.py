"""Entry point of the ``pyctrd`` console script."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def serve(
    config: Annotated[str | None, typer.Option("--config", "-c", envvar="PYCTR_CONFIG",
                                               help="Configuration file [default: /etc/pyctr/config.toml].")] = None,
    root: Annotated[str | None, typer.Option("--root", envvar="PYCTR_ROOT", help="Persistent data directory.")] = None,
    state: Annotated[str | None, typer.Option("--state", envvar="PYCTR_STATE", help="Runtime state directory.")] = None,
    address: Annotated[str | None, typer.Option("--address", "-a", help="Unix socket to serve the API on.")] = None,
    metrics_address: Annotated[str | None, typer.Option("--metrics-address",
                                                        help="HOST:PORT to serve /v1/metrics on.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """pyctrd: serve pyctr's API (namespaces, content, images, snapshots, containers, tasks, events) on a
    unix socket, with the plugins loaded once for every client."""
    print("pyctrd: the daemon is not part of this build yet; use the embedded CLI (pyctr --root ...)",
          file=sys.stderr)
    raise typer.Exit(9)


def main() -> None:
    app()
