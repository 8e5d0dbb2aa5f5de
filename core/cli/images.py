"""``pyctr images``: list, remove, tag, inspect, import, export, check, prune and unpack images
(``pull`` and ``push`` come from :mod:`pyctr.cli.images_remote` when it is installed)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._state import opts

if TYPE_CHECKING:
    from pyctr.plugins.images.metadata.service import ImageService

app = typer.Typer(no_args_is_help=True)


def _svc(ctx: typer.Context) -> tuple[ImageService, str]:
    o = opts(ctx)
    svc: ImageService = o.client().plugin("images")
    return svc, o.namespace


def _json_out(v: Any) -> None:
    print(json.dumps(v, indent=2, sort_keys=True, default=str))


@app.command("ls")
def ls(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument(
        help="Filters, containerd syntax (name, target.digest, target.mediatype, labels.<key>, "
             "annotations.<key>); several are ORed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print references only.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """List images: REF TYPE DIGEST SIZE PLATFORMS LABELS."""
    svc, ns = _svc(ctx)
    images = svc.list(ns, filters or [])
    if quiet:
        for i in images:
            print(i.name)
        return
    rows = [svc.summary(ns, i) for i in images]
    if output == "json":
        _json_out(rows)
        return
    from .output import human_size, labels_str, table

    table(["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"],
          [(r["name"], r["type"], r["digest"], human_size(r["size"]), ",".join(r["platforms"]) or "-",
            labels_str(r["labels"])) for r in rows])


@app.command("list", hidden=True)
def list_(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument()] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    output: Annotated[str, typer.Option("--output", "-o")] = "table",
) -> None:
    """Alias of ``ls``."""
    ls(ctx, filters, quiet, output)


@app.command("rm")
def rm(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="Images to remove.")],
    sync: Annotated[bool, typer.Option("--sync", help="Collect garbage before returning.")] = False,
) -> None:
    """Remove image records (the garbage collector removes what only they held)."""
    from ..errdefs import NotFound

    svc, ns = _svc(ctx)
    failed: list[str] = []
    for r in refs:
        try:
            print(svc.delete(ns, r).name)
        except NotFound as e:
            print(f"pyctr: {e}", file=sys.stderr)
            failed.append(r)
    if sync:
        svc.collect_garbage()
    if failed:
        raise typer.Exit(NotFound.exit_code)


@app.command("tag")
def tag(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The existing image.")],
    targets: Annotated[list[str], typer.Argument(help="New names for it.")],
    force: Annotated[bool, typer.Option("--force", help="Re-point a name that exists.")] = False,
) -> None:
    """Give an image more names."""
    svc, ns = _svc(ctx)
    for t in targets:
        print(svc.tag(ns, source, t, force=force).name)


@app.command("label")
def label(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The image.")],
    labels: Annotated[list[str], typer.Argument(help="KEY=VALUE to set, KEY= to remove.")],
) -> None:
    """Set or remove labels on an image record; print the labels it has now."""
    from ..images import Image
    from .output import labels_str, parse_labels

    svc, ns = _svc(ctx)
    img = svc.resolve(ns, ref)
    new = parse_labels(labels)
    out = svc.update(ns, Image(name=img.name, target=img.target, labels=new), [f"labels.{k}" for k in new])
    print(labels_str(out.labels))


@app.command("inspect")
def inspect(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="The image.")]) -> None:
    """Show an image's record, manifests, config, layers and content status as JSON."""
    svc, ns = _svc(ctx)
    _json_out(svc.inspect(ns, ref))


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="OCI layout tar or docker save tar ('-' for stdin).")],
    base_name: Annotated[str | None, typer.Option(
        "--base-name", help="Name images NAME:TAG from the archive's ref.name tags (and keep only "
                            "references under NAME).")] = None,
    index_name: Annotated[str | None, typer.Option("--index-name", help="Also name the whole index.")] = None,
    all_platforms: Annotated[bool, typer.Option("--all-platforms",
                                                help="Import content for every platform.")] = False,
    platform: Annotated[str | None, typer.Option("--platform", help="Platform to import/unpack.")] = None,
    digests: Annotated[bool, typer.Option("--digests", help="Also name each image NAME@DIGEST.")] = False,
    no_unpack: Annotated[bool, typer.Option("--no-unpack", help="Do not unpack the layers.")] = False,
    snapshotter: Annotated[str | None, typer.Option("--snapshotter",
                                                    help="Snapshotter to unpack into.")] = None,
) -> None:
    """Import images from an archive; print the names made."""
    import os
    import shutil
    import tempfile

    svc, ns = _svc(ctx)
    spool = None
    if file != "-":
        file = os.path.abspath(file)  # the daemon resolves paths from its own working directory
    elif opts(ctx).client().remote:  # the daemon cannot read our stdin: spool it to a file it can read
        spool = tempfile.NamedTemporaryFile(prefix="pyctr-import-", suffix=".tar")  # noqa: SIM115
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
        spool.flush()
        file = spool.name
    try:
        images = svc.import_archive(ns, file, base_name=base_name, index_name=index_name,
                                    all_platforms=all_platforms, unpack=not no_unpack, snapshotter=snapshotter,
                                    digests=digests, platform=platform)
    finally:
        if spool is not None:
            spool.close()
    for i in images:
        print(f"{i.name} {i.target.digest}")


@app.command("export")
def export(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Archive to write ('-' for stdout).")],
    refs: Annotated[list[str], typer.Argument(help="Images to export.")],
    platform: Annotated[list[str] | None, typer.Option("--platform", help="Platform(s) to export.")] = None,
    all_platforms: Annotated[bool, typer.Option(
        "--all-platforms", help="Export the content of every platform present.")] = False,
    skip_manifest_json: Annotated[bool, typer.Option(
        "--skip-manifest-json", help="Leave out the docker manifest.json.")] = False,
) -> None:
    """Write images as an OCI layout tar (with a docker manifest.json)."""
    import os
    import shutil
    import tempfile

    svc, ns = _svc(ctx)
    if file == "-" and opts(ctx).client().remote:  # the daemon writes a file; we copy it to stdout
        with tempfile.TemporaryDirectory(prefix="pyctr-export-") as d:
            out = os.path.join(d, "image.tar")
            svc.export_archive(ns, out, refs, platforms=platform or None, all_platforms=all_platforms,
                               skip_manifest_json=skip_manifest_json)
            with open(out, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
        return
    if file != "-":
        file = os.path.abspath(file)
    svc.export_archive(ns, file, refs, platforms=platform or None, all_platforms=all_platforms,
                       skip_manifest_json=skip_manifest_json)


@app.command("check")
def check(
    ctx: typer.Context,
    refs: Annotated[list[str] | None, typer.Argument(help="Images to check (default: all).")] = None,
    snapshotter: Annotated[str | None, typer.Option("--snapshotter",
                                                    help="Where to look for layers.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print incomplete images only.")] = False,
) -> None:
    """Check that images' content is all here: REF TYPE STATUS SIZE UNPACKED."""
    from .output import human_size, table

    svc, ns = _svc(ctx)
    names = refs or [i.name for i in svc.list(ns)]
    rows = [svc.check(ns, n, snapshotter) for n in names]
    if quiet:
        for r in rows:
            if r["status"] != "complete":
                print(r["name"])
        return
    table(["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"],
          [(r["name"], r["type"], r["digest"], f"{r['status']} ({r['available']}/{r['required']})",
            human_size(r["size"]), str(r["unpacked"]).lower()) for r in rows])
    if any(r["status"] != "complete" for r in rows):
        raise typer.Exit(1)


@app.command("prune")
def prune(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Remove every image no container uses.")] = False,
    sync: Annotated[bool, typer.Option("--sync", help="Collect garbage before returning.")] = False,
) -> None:
    """Remove unused images: dangling ones (digest-only names, missing content), or with --all every
    image no container was made from."""
    svc, ns = _svc(ctx)
    for name in svc.prune(ns, all=all_, sync=sync):
        print(name)


@app.command("unpack")
def unpack(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The image.")],
    snapshotter: Annotated[str | None, typer.Option("--snapshotter",
                                                    help="Snapshotter to unpack into.")] = None,
    platform: Annotated[str | None, typer.Option("--platform", help="Platform (default: this host).")] = None,
) -> None:
    """Unpack an image's layers into a snapshotter; print the top layer's chain ID."""
    svc, ns = _svc(ctx)
    print(svc.unpack(ns, ref, snapshotter=snapshotter, platform=platform))


def _register_remote() -> None:
    try:
        from . import images_remote  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return
    images_remote.register(app)


_register_remote()

from . import images_build  # noqa: E402  (pyctr images build-busybox)

images_build.register(app)
