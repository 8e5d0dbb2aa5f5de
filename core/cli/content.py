"""``pyctr content``: the namespace's blobs (ls, get, ingest, rm, label) and ingests (active, abort)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ._state import opts

if TYPE_CHECKING:
    from ..metadata.content import NamespacedContentStore

app = typer.Typer(no_args_is_help=True)


def _store(ctx: typer.Context) -> tuple[NamespacedContentStore, str]:
    o = opts(ctx)
    return o.client().plugin("metadata").content, o.namespace


@app.command("ls")
def ls(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument(
        help="Filters, containerd syntax (digest, size, labels.<key>): 'labels.\"a b\"==x'. ORed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print digests only.")] = False,
) -> None:
    """List the namespace's blobs: DIGEST SIZE AGE LABELS."""
    from .output import human_age, human_size, labels_str, table

    store, ns = _store(ctx)
    infos = store.walk(ns, filters or [])
    if quiet:
        for i in infos:
            print(i.digest)
        return
    table(["DIGEST", "SIZE", "AGE", "LABELS"],
          [(i.digest, human_size(i.size), human_age(i.created_at), labels_str(i.labels)) for i in infos])


@app.command("get")
def get(ctx: typer.Context, digest: Annotated[str, typer.Argument(help="The blob's digest.")]) -> None:
    """Write a blob to stdout (binary)."""
    import shutil

    store, ns = _store(ctx)
    out = sys.stdout.buffer
    with store.open(ns, digest) as f:
        shutil.copyfileobj(f, out, 1 << 20)
    out.flush()


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    ref: Annotated[str, typer.Option("--ref", help="The ingest's ref (resumable under the same ref).")],
    expected_digest: Annotated[str, typer.Option("--expected-digest", help="Fail unless the content has this "
                                                 "digest.")] = "",
    expected_size: Annotated[int, typer.Option("--expected-size", help="Fail unless the content has this "
                                               "many bytes.")] = -1,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE label on the blob.")] = None,
) -> None:
    """Store what stdin yields as a blob; print its digest.  An interrupted ingest resumes where it
    stopped when run again with the same --ref (stdin then supplies the rest)."""
    from ..errdefs import AlreadyExists
    from .output import parse_labels

    store, ns = _store(ctx)
    labels = parse_labels(label or [])
    try:
        w = store.writer(ns, ref, expected_size, expected_digest)
    except AlreadyExists:
        if not expected_digest:
            raise
        print(expected_digest)  # already present (or linked from another namespace): nothing to send
        return
    try:
        if opts(ctx).client().remote:  # the daemon cannot read our stdin: send it in chunks
            while chunk := sys.stdin.buffer.read(1 << 20):
                w.write(chunk)
        else:
            w.copy_from(sys.stdin.buffer.fileno())
    except BaseException:
        w.close()  # keep what arrived, for a resume
        raise
    try:
        info = w.commit(expected_size, expected_digest, labels)
        print(info.digest)
    except AlreadyExists:
        print(w.digest())


@app.command("rm")
def rm(ctx: typer.Context, digests: Annotated[list[str], typer.Argument(help="Digests to remove.")]) -> None:
    """Remove blobs from the namespace (the garbage collector frees unreferenced bytes)."""
    from .output import each

    store, ns = _store(ctx)
    each(digests, lambda d: store.delete(ns, d), echo=True)


@app.command("label")
def label(
    ctx: typer.Context,
    digest: Annotated[str, typer.Argument(help="The blob's digest.")],
    labels: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE to set; KEY= removes KEY.")] = None,
) -> None:
    """Set or remove labels on a blob; print the labels now set."""
    from .output import labels_str, parse_labels

    store, ns = _store(ctx)
    changes = parse_labels(labels or [])
    info = store.update(ns, digest, changes, [f"labels.{k}" for k in changes])
    print(labels_str(info.labels))


@app.command("active")
def active(
    ctx: typer.Context,
    filters: Annotated[list[str] | None, typer.Argument(help="Filters on ref, expected, total.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print refs only.")] = False,
) -> None:
    """List ingests in progress: REF SIZE TOTAL EXPECTED UPDATED."""
    from .output import human_age, table

    store, ns = _store(ctx)
    sts = store.list_statuses(ns, filters or [])
    if quiet:
        for s in sts:
            print(s.ref)
        return
    table(["REF", "SIZE", "TOTAL", "EXPECTED", "UPDATED"],
          [(s.ref, s.offset, s.total if s.total >= 0 else "-", s.expected or "-", human_age(s.updated_at))
           for s in sts])


@app.command("abort")
def abort(ctx: typer.Context, refs: Annotated[list[str], typer.Argument(help="Ingest refs.")]) -> None:
    """Remove ingests in progress."""
    store, ns = _store(ctx)
    for r in refs:
        store.abort(ns, r)
        print(r)
