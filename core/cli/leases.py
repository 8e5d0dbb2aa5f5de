"""``pyctr leases ls|create|rm``, as ``ctr leases``."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ._state import opts
from .output import labels_str, parse_labels, table

if TYPE_CHECKING:
    from ..metadata.leases import LeaseManager

app = typer.Typer(no_args_is_help=True)

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """A Go-style duration (``24h``, ``1h30m``, ``90s``, ``500ms``; a bare number is seconds) in seconds."""
    from ..errdefs import InvalidArgument

    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(t) or not t:
        raise InvalidArgument(f"invalid duration {text!r}: use e.g. 24h, 1h30m, 90s or 500ms")
    return total


def _leases(ctx: typer.Context) -> LeaseManager:
    lm: LeaseManager = opts(ctx).client().plugin("metadata").leases
    return lm


@app.command("ls")
def ls(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument(
        help="Filters (containerd's syntax: id==x, labels.k==v); several are ORed.",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print ids only.")] = False,
) -> None:
    """List the namespace's leases."""
    from datetime import UTC, datetime

    o = opts(ctx)
    leases = _leases(ctx).list(o.namespace, filters or [])
    if quiet:
        for lease in leases:
            print(lease.id)
        return
    table(["ID", "CREATED AT", "LABELS"], [
        (lease.id, datetime.fromtimestamp(lease.created_at / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
         labels_str(lease.labels))
        for lease in leases
    ])


@app.command("create")
def create(
    ctx: typer.Context,
    id_: Annotated[str | None, typer.Option("--id", help="The lease's id [default: random].")] = None,
    expires: Annotated[str, typer.Option(
        "--expires", "-x", help="Expire after this long (24h, 30m, 90s); 0 never expires.")] = "24h",
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="A label, KEY=VALUE (repeatable).")] = None,
) -> None:
    """Create a lease and print its id."""
    ttl = parse_duration(expires)
    lease = _leases(ctx).create(opts(ctx).namespace, id_, parse_labels(label or []),
                                ttl=ttl if ttl > 0 else None)
    print(lease.id)


@app.command("rm")
def rm(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(help="Leases to remove.")],
    sync: Annotated[bool, typer.Option("--sync", help="Collect garbage before returning.")] = False,
) -> None:
    """Remove leases; what only they held is left to the garbage collector (now, with --sync)."""
    from ..errdefs import PyctrError

    o = opts(ctx)
    lm = _leases(ctx)
    code = 0
    for lid in ids:
        try:
            lm.delete(o.namespace, lid)
        except PyctrError as e:
            print(f"pyctr: {e}", file=sys.stderr)
            code = code or e.exit_code
            continue
        print(lid)
    if sync:
        result = o.client().plugin("gc").schedule_and_wait()
        for err in result.errors:
            print(f"pyctr: gc: {err}", file=sys.stderr)
    if code:
        raise typer.Exit(code)
