"""``pyctr metrics``: print what ``/v1/metrics`` serves (Prometheus text format).

Through the daemon when one answers (its figures: RPC, events, every running container); embedded
otherwise (the containers' cgroup figures and this process's plugins).
"""

from __future__ import annotations

import sys

import typer


def register(app: typer.Typer) -> None:
    @app.command("metrics")
    def metrics(ctx: typer.Context) -> None:
        """Print the metrics in the Prometheus text format (as served at /v1/metrics)."""
        from ._state import opts

        client = opts(ctx).client()
        plugin = client.plugin("metrics")
        if not client.remote:
            plugin.attach(client.engine)
        sys.stdout.write(plugin.render())
