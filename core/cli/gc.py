"""Top-level ``pyctr gc``: run the garbage collector now and say what it removed."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._state import opts
from .output import table


def register(app: typer.Typer) -> None:
    """Add ``pyctr gc`` to the top-level app."""

    @app.command("gc")
    def gc(
        ctx: typer.Context,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run",
                                              help="Show what would be removed; remove nothing.")] = False,
    ) -> None:
        """Remove content and snapshots that no image, container or lease references, and expired leases,
        in every namespace.  Exits non-zero if some object could not be removed (the rest are)."""
        result = opts(ctx).client().plugin("gc").collect(dry_run=dry_run)
        if not quiet and (result.records or result.backend):
            rows = [(kind, ns, key) for kind, ns, key in result.records]
            shown = {(k, key) for k, _, key in result.records}  # a blob whose record went: shown once
            rows += [(f"{kind} (backend)", "-", key) for kind, key in result.backend
                     if (kind, key) not in shown]
            table(["TYPE", "NAMESPACE", "NAME"], rows)
        blobs = sum(1 for kind, _ in result.backend if kind == "content")
        snaps = sum(1 for kind, _ in result.backend if kind == "snapshot")
        verb = "would remove" if dry_run else "removed"
        print(f"{verb} {len(result.records)} records ({len(result.removed_content)} content, "
              f"{len(result.removed_snapshots)} snapshots, {len(result.removed_images)} images, "
              f"{len(result.removed_leases)} leases, {len(result.removed_ingests)} ingests), "
              f"{blobs} blobs and {snaps} backend snapshots in {result.duration:.3f}s")
        for err in result.errors:
            print(f"pyctr: gc: {err}", file=sys.stderr)
        if result.errors:
            raise typer.Exit(1)
