"""``pyctr snapshots``: list, inspect, make, commit, mount and remove snapshots, as ``ctr snapshots``.

``--snapshotter NAME`` (on the group, or on any subcommand; ``PYCTR_SNAPSHOTTER``) picks the
snapshotter; the default is the namespace's ``containerd.io/defaults/snapshotter`` label, else
overlayfs (else the first snapshotter that loaded)::

    pyctr snapshots --snapshotter native ls
    pyctr snapshots view my-view sha256:...        # a read-only snapshot of a committed one
    pyctr snapshots mounts /mnt my-view            # prints: mount -o ro,rbind /var/lib/... /mnt
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._state import opts

if TYPE_CHECKING:
    from ..metadata.snapshots import NamespacedSnapshotter
    from ..snapshots import Info

app = typer.Typer(no_args_is_help=True)

_SnOpt = Annotated[str | None, typer.Option("--snapshotter", help="The snapshotter to use (overrides the "
                                                                  "group's --snapshotter).")]
_OutOpt = Annotated[str, typer.Option("--output", "-o", help="table or json.")]
_LabelOpt = Annotated[list[str] | None, typer.Option("--label", "-l", help="A label KEY=VALUE (repeatable).")]
_TargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="Print the command that mounts it at TARGET.")]


@app.callback()
def _group(
    ctx: typer.Context,
    snapshotter: Annotated[str | None, typer.Option(
        "--snapshotter", envvar="PYCTR_SNAPSHOTTER",
        help="The snapshotter to use [default: the namespace's default, else overlayfs].")] = None,
) -> None:
    """Manage snapshots."""
    ctx.meta["pyctr.snapshotter"] = snapshotter


def _sn(ctx: typer.Context, override: str | None = None) -> tuple[NamespacedSnapshotter, str]:
    o = opts(ctx)
    name = override or ctx.meta.get("pyctr.snapshotter")
    store = o.client().plugin("metadata")
    if not name:
        from ..errdefs import NotFound
        from ..metadata.namespaces import LABEL_DEFAULT_SNAPSHOTTER

        try:
            name = store.namespaces.labels(o.namespace).get(LABEL_DEFAULT_SNAPSHOTTER) or None
        except NotFound:  # no such namespace yet: the global default
            name = None
    sn: NamespacedSnapshotter = store.snapshotter(name)
    return sn, o.namespace


def _json(v: Any) -> None:
    print(json.dumps(v, indent=2, sort_keys=True))


def _labels(items: list[str] | None) -> dict[str, str]:
    from .output import parse_labels

    return parse_labels(items or [])


def _rooted(items: list[str] | None) -> dict[str, str]:
    """The labels given, plus ``containerd.io/gc.root`` (as ``ctr snapshots prepare/view`` set it), so
    the garbage collector keeps a snapshot made by hand until it is removed by hand."""
    import datetime

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"containerd.io/gc.root": now, **_labels(items)}


def _print_mounts(target: str, mounts: list[Any]) -> None:
    from ..mount import mount_command

    print(mount_command(mounts, target))


@app.command("ls")
def ls(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument(
        help="Filters, containerd syntax (name, parent, kind, labels.<key>); several are ORed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print keys only.")] = False,
    output: _OutOpt = "table",
    snapshotter: _SnOpt = None,
) -> None:
    """List snapshots: KEY PARENT KIND."""
    sn, ns = _sn(ctx, snapshotter)
    infos = list(sn.walk(ns, filters or []))
    if quiet:
        for i in infos:
            print(i.name)
        return
    if output == "json":
        _json([i.to_dict() for i in infos])
        return
    from .output import table

    table(["KEY", "PARENT", "KIND"], [(i.name, i.parent, i.kind.value) for i in infos])


@app.command("list", hidden=True)
def list_(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument()] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    output: _OutOpt = "table",
    snapshotter: _SnOpt = None,
) -> None:
    """Alias of ``ls``."""
    ls(ctx, filters, quiet, output, snapshotter)


@app.command("tree")
def tree(ctx: typer.Context, snapshotter: _SnOpt = None) -> None:
    """Show snapshots as a tree of parents and children."""
    sn, ns = _sn(ctx, snapshotter)
    infos = list(sn.walk(ns))
    children: dict[str, list[Info]] = {}
    names = {i.name for i in infos}
    for i in infos:
        children.setdefault(i.parent if i.parent in names else "", []).append(i)

    def show(parent: str, depth: int) -> None:
        for i in children.get(parent, []):
            print(f"{'  ' * depth}\\_ {i.name}" if depth else i.name)
            show(i.name, depth + 1)

    show("", 0)


def _create(ctx: typer.Context, view: bool, key: str, parent: str, target: str | None,
            labels: list[str] | None, snapshotter: str | None, output: str) -> None:
    sn, ns = _sn(ctx, snapshotter)
    lbls = _rooted(labels)
    mounts = sn.view(ns, key, parent, lbls) if view else sn.prepare(ns, key, parent, lbls)
    if output == "json":
        _json([m.to_dict() for m in mounts])
    elif target:
        _print_mounts(target, mounts)


@app.command("prepare")
def prepare(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The new active snapshot's key.")],
    parent: Annotated[str, typer.Argument(help="A committed snapshot to start from.")] = "",
    target: _TargetOpt = None,
    label: _LabelOpt = None,
    output: _OutOpt = "",
    snapshotter: _SnOpt = None,
) -> None:
    """Make an active (writable) snapshot KEY on PARENT."""
    _create(ctx, False, key, parent, target, label, snapshotter, output)


@app.command("view")
def view(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The new view's key.")],
    parent: Annotated[str, typer.Argument(help="The committed snapshot to look at.")] = "",
    target: _TargetOpt = None,
    label: _LabelOpt = None,
    output: _OutOpt = "",
    snapshotter: _SnOpt = None,
) -> None:
    """Make a read-only snapshot KEY of PARENT."""
    _create(ctx, True, key, parent, target, label, snapshotter, output)


@app.command("commit")
def commit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The committed snapshot's name.")],
    key: Annotated[str, typer.Argument(help="The active snapshot to commit.")],
    label: _LabelOpt = None,
    snapshotter: _SnOpt = None,
) -> None:
    """Commit the active snapshot KEY as NAME (labelled containerd.io/gc.root, so the garbage collector
    keeps it until it is removed)."""
    sn, ns = _sn(ctx, snapshotter)
    sn.commit(ns, name, key, _rooted(label))


@app.command("rm")
def rm(
    ctx: typer.Context,
    keys: Annotated[list[str], typer.Argument(help="Snapshots to remove.")],
    snapshotter: _SnOpt = None,
) -> None:
    """Remove snapshots (one with children is refused)."""
    from ..errdefs import PyctrError

    sn, ns = _sn(ctx, snapshotter)
    code = 0
    for k in keys:
        try:
            sn.remove(ns, k)
        except PyctrError as e:
            print(f"pyctr: {e}", file=sys.stderr)
            code = code or e.exit_code
    if code:
        raise typer.Exit(code)


for _alias in ("delete", "remove"):
    app.command(_alias, hidden=True)(rm)


@app.command("usage")
def usage(
    ctx: typer.Context,
    keys: Annotated[list[str] | None, typer.Argument(help="Snapshots (default: all).")] = None,
    in_bytes: Annotated[bool, typer.Option("--bytes", "-b", help="Sizes in bytes.")] = False,
    output: _OutOpt = "table",
    snapshotter: _SnOpt = None,
) -> None:
    """Disk use of snapshots, each on its own (not counting parents): KEY SIZE INODES."""
    sn, ns = _sn(ctx, snapshotter)
    names = keys or [i.name for i in sn.walk(ns)]
    rows = [(k, sn.usage(ns, k)) for k in names]
    if output == "json":
        _json({k: u.to_dict() for k, u in rows})
        return
    from .output import human_size, table

    table(["KEY", "SIZE", "INODES"],
          [(k, u.size if in_bytes else human_size(u.size), u.inodes) for k, u in rows])


@app.command("mounts")
def mounts(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="Where the printed command mounts the snapshot.")],
    key: Annotated[str, typer.Argument(help="An active snapshot or a view.")],
    output: _OutOpt = "",
    snapshotter: _SnOpt = None,
) -> None:
    """Print the shell command that mounts snapshot KEY at TARGET."""
    sn, ns = _sn(ctx, snapshotter)
    ms = sn.mounts(ns, key)
    if output == "json":
        _json([m.to_dict() for m in ms])
        return
    _print_mounts(target, ms)


app.command("m", hidden=True)(mounts)


@app.command("info")
def info(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The snapshot.")],
    snapshotter: _SnOpt = None,
) -> None:
    """Show a snapshot's kind, parent, labels and times as JSON."""
    sn, ns = _sn(ctx, snapshotter)
    _json(sn.stat(ns, key).to_dict())


@app.command("label")
def label(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The snapshot.")],
    labels: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE to set, KEY= to remove.")] = None,
    snapshotter: _SnOpt = None,
) -> None:
    """Set or remove labels of a snapshot; prints the labels it has afterwards."""
    from ..snapshots import Info as SnapInfo
    from ..snapshots import Kind

    sn, ns = _sn(ctx, snapshotter)
    lbls = _labels(labels)
    if lbls:
        new = sn.update(ns, SnapInfo(kind=Kind.ACTIVE, name=key, labels=lbls),
                        [f"labels.{k}" for k in lbls])
    else:
        new = sn.stat(ns, key)
    from .output import labels_str

    print(labels_str(new.labels))
