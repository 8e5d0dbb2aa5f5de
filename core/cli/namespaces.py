"""``pyctr namespaces ls|create|rm|label`` (alias ``ns``), as ``ctr namespaces``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ._state import opts
from .output import labels_str, parse_labels, table

if TYPE_CHECKING:
    from ..metadata.namespaces import NamespaceStore

app = typer.Typer(no_args_is_help=True)


def _store(ctx: typer.Context) -> NamespaceStore:
    ns: NamespaceStore = opts(ctx).client().plugin("metadata").namespaces
    return ns


@app.command("ls")
def ls(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print names only.")] = False,
) -> None:
    """List namespaces with their labels."""
    spaces = _store(ctx).list()
    if quiet:
        for n in spaces:
            print(n.name)
        return
    table(["NAME", "LABELS"], [(n.name, labels_str(n.labels)) for n in spaces])


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The new namespace's name.")],
    labels: Annotated[list[str] | None, typer.Argument(help="Labels, KEY=VALUE.", show_default=False)] = None,
) -> None:
    """Create a namespace, optionally with labels."""
    _store(ctx).create(name, {k: v for k, v in parse_labels(labels or []).items() if v})


@app.command("rm")
def rm(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Namespaces to remove (they must be empty).")],
) -> None:
    """Remove empty namespaces; one that still holds objects is refused, naming what is left."""
    from ..errdefs import PyctrError

    store = _store(ctx)
    code = 0
    for name in names:
        try:
            store.delete(name)
        except PyctrError as e:
            print(f"pyctr: {e}", file=sys.stderr)
            code = code or e.exit_code
            continue
        print(name)
    if code:
        raise typer.Exit(code)


@app.command("label")
def label(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The namespace.")],
    labels: Annotated[list[str] | None, typer.Argument(
        help="Labels to set, KEY=VALUE; KEY= removes one. None: print the labels.",
        show_default=False)] = None,
) -> None:
    """Set or remove a namespace's labels, or print them."""
    store = _store(ctx)
    current = store.set_labels(name, parse_labels(labels)) if labels else store.labels(name)
    for k, v in sorted(current.items()):
        print(f"{k}={v}")
