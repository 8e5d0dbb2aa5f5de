"""``pyctr containers``: create, ls, info, rm, label (ctr's spellings)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ._state import opts
from .run import service, with_run_options

app = typer.Typer(no_args_is_help=True)


def create(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="Image reference.", show_default=False)],
    container: Annotated[str, typer.Argument(metavar="ID", help="Container id.", show_default=False)],
    args: Annotated[list[str] | None, typer.Argument(help="Command and arguments (default: the image's).",
                                                     show_default=False)] = None,
    *,
    run_flags: dict[str, Any],
) -> None:
    """Create a container (record + writable snapshot) from an image: IMAGE ID [CMD...]."""
    from ..runner import build_run_options, ensure_image

    o = opts(ctx)
    client = o.client()
    ro, labels = build_run_options(run_flags, args)
    ensure_image(client, o.namespace, image)
    service(client).create_container(o.namespace, container, image, ro,
                                     snapshotter=run_flags.get("snapshotter") or None,
                                     runtime=run_flags.get("runtime") or "", labels=labels)


app.command("create", context_settings={"allow_interspersed_args": False})(with_run_options(create))


@app.command("ls")
def ls(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument(
        help="Filters, containerd syntax (id, image, runtime.name, snapshotter, labels.<key>); "
             "several are ORed.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print ids only.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """List containers: CONTAINER IMAGE RUNTIME."""
    from .output import table

    o = opts(ctx)
    items = service(o.client()).list(o.namespace, filters or [])
    if quiet:
        for c in items:
            print(c.id)
        return
    if output == "json":
        print(json.dumps([c.to_dict() for c in items], indent=2, sort_keys=True))
        return
    table(["CONTAINER", "IMAGE", "RUNTIME"], [(c.id, c.image or "-", c.runtime.name) for c in items])


@app.command("info")
def info(
    ctx: typer.Context,
    container: Annotated[str, typer.Argument(metavar="ID", help="Container id.", show_default=False)],
    spec: Annotated[bool, typer.Option("--spec", help="Print only the OCI runtime spec.")] = False,
) -> None:
    """Show a container's record (JSON)."""
    from .network import attachment_info

    o = opts(ctx)
    c = service(o.client()).get(o.namespace, container)
    out = c.spec if spec else c.to_dict()
    net = None if spec else attachment_info(o.client(), o.namespace, container)
    if net is not None:
        out["network"] = net
    print(json.dumps(out, indent=2, sort_keys=True))


@app.command("rm")
def rm(
    ctx: typer.Context,
    containers: Annotated[list[str], typer.Argument(metavar="ID...", help="Container ids.",
                                                    show_default=False)],
    force: Annotated[bool, typer.Option("--force", "-f", help="Delete a running task first.")] = False,
    keep_snapshot: Annotated[bool, typer.Option("--keep-snapshot", help="Leave the snapshot.")] = False,
) -> None:
    """Remove containers and their snapshots (a running task needs --force)."""
    from .output import each

    o = opts(ctx)
    svc = service(o.client())
    each(containers, lambda cid: svc.delete_container(o.namespace, cid, force=force, keep_snapshot=keep_snapshot))


@app.command("label")
def label(
    ctx: typer.Context,
    container: Annotated[str, typer.Argument(metavar="ID", help="Container id.", show_default=False)],
    labels: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE to set, KEY= to remove.",
                                                       show_default=False)] = None,
) -> None:
    """Set or remove labels on a container; print its labels."""
    from .output import labels_str, parse_labels

    o = opts(ctx)
    svc = service(o.client())
    ns = o.namespace
    c = svc.set_labels(ns, container, parse_labels(labels)) if labels else svc.get(ns, container)
    print(labels_str(c.labels))
