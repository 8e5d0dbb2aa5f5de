"""``pyctr metrics``: print what ``/v1/metrics`` serves (Prometheus text format).

Through the daemon when one answers (its figures: RPC, events, every running container); embedded
otherwise (the containers' cgroup figures and this process's plugins).
"""

from __future__ import annotations

import sys
from typing import Any

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


def stats_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """``pyctr tasks metrics`` table rows from a :class:`~pyctr.cgroups.CgroupStats` dict (or the
    runtime's own figures): one row per figure, sizes also in human units, one row per I/O device."""
    from .output import human_size

    rows: list[tuple[str, str]] = []
    for k, v in stats.items():
        if k == "io_devices":
            continue
        if k == "cpu_per_cpu_ns":
            rows.extend((f"cpu_ns cpu{i}", f"{n} ({n / 1e9:.3f} s)") for i, n in enumerate(v or []))
            continue
        if v is None:
            text = "-"
        elif isinstance(v, int) and not isinstance(v, bool) and k.startswith("memory_") and k not in (
                "memory_pgfault", "memory_pgmajfault", "memory_oom_kills"):
            text = f"{v} ({human_size(v)})"
        elif isinstance(v, int) and k.endswith("_ns"):
            text = f"{v} ({v / 1e9:.3f} s)"
        else:
            text = str(v)
        rows.append((k, text))
    for dev in stats.get("io_devices") or []:
        name = f"io {dev['major']}:{dev['minor']}"
        rows.append((name, f"read {dev['read_bytes']} B in {dev['read_ops']} ops, "
                           f"write {dev['write_bytes']} B in {dev['write_ops']} ops"))
    return rows
