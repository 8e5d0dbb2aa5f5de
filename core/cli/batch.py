"""``pyctr batch``: launch containers in bulk (``run``) and remove a batch at once (``rm``).

``batch run`` shows a progress line on stderr when stderr is a terminal (started, running, exited,
failed, containers per second) and always ends with a one-line summary on stderr; ``--format json``
prints one JSON object per container on stdout as it finishes (``id``, ``index``, ``pid``,
``exit_status``, ``started_at``, ``duration``, ``error``, ``status``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._state import opts

if TYPE_CHECKING:
    from ..batch import BatchProgress, BatchResult

app = typer.Typer(no_args_is_help=True)


def _read_specs(path: str) -> list[dict[str, Any]]:
    from ..errdefs import InvalidArgument

    out: list[dict[str, Any]] = []
    try:
        f = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise InvalidArgument(f"cannot read --spec {path}: {e.strerror}") from None
    with f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                d = json.loads(line)
            except ValueError as e:
                raise InvalidArgument(f"{path}:{n}: not JSON: {e}") from None
            if not isinstance(d, dict):
                raise InvalidArgument(f"{path}:{n}: each line must be a JSON object")
            out.append(d)
    return out


class _Progress:
    """One redrawn line on a terminal's stderr (nothing when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.width = 0
        self.last = 0.0

    def show(self, p: BatchProgress, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        done = p.exited + p.failed
        rate = done / p.elapsed if p.elapsed > 0 else 0.0
        line = (f"batch {p.batch_id}: started {p.started}/{p.total}  running {p.running}  exited {p.exited}"
                f"  failed {p.failed}  {rate:.1f}/s")
        try:
            cols = os.get_terminal_size(sys.stderr.fileno()).columns or 120  # 0: the terminal does not say
        except OSError:
            cols = 120
        line = line[:max(cols - 1, 10)]
        sys.stderr.write("\r" + line + " " * max(0, self.width - len(line)))
        sys.stderr.flush()
        self.width = len(line)

    def clear(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0


def _wait_daemon_cleanup(client: Any, ns: str, bid: str, rm: bool, timeout: float = 15.0) -> None:
    """A daemon stops a cancelled batch at its next tick: with ``rm``, wait until its containers are
    gone, so that the command returns with nothing of the batch left (as in embedded mode)."""
    if not rm:
        return
    from ..batch import LABEL_BATCH_ID
    from ..runner import service

    svc = service(client)
    flt = [f"labels.{json.dumps(LABEL_BATCH_ID)}=={json.dumps(bid)}"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not svc.list(ns, flt):
                return
        except Exception:
            return
        time.sleep(0.1)


def _parse_labels(items: list[str] | None) -> dict[str, str]:
    from ..runner import parse_labels

    return parse_labels(items or [])


@app.command("run", context_settings={"allow_interspersed_args": False})
def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="Image reference (optional with --spec entries that name one).",
                                         show_default=False)] = "",
    args: Annotated[list[str] | None, typer.Argument(help="Command and arguments (default: the image's).",
                                                     show_default=False)] = None,
    count: Annotated[int, typer.Option("--count", "-N", help="How many containers (without --spec).")] = 1,
    parallel: Annotated[int, typer.Option("--parallel", "-P", help="Most containers launched at once.")] = 8,
    rm: Annotated[bool, typer.Option("--rm", help="Remove each container when it exits.")] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Start them and return (shared shims).")] = False,
    spec: Annotated[str, typer.Option("--spec", help="JSON lines, one container each: image, args, env, "
                                      "mounts, resources, labels, net, id ('-' for stdin).")] = "",
    fmt: Annotated[str, typer.Option("--format", help="text, or json: one JSON line per container.")] = "text",
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE label on every container.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE for every container.")] = None,
    net: Annotated[str, typer.Option("--net", help="none (own namespace, lo only) or host.")] = "none",
    group_size: Annotated[int, typer.Option("--group-size", help="Containers per shared shim (--detach).")] = 50,
    batch_id: Annotated[str, typer.Option("--name", help="Batch id (label pyctr.batch.id; default random).")] = "",
    mode: Annotated[str, typer.Option("--mode", help="auto, direct (one runc run each, supervised by the "
                                      "batch) or shim (tasks in shared shims).")] = "auto",
    rootfs: Annotated[str, typer.Option("--rootfs", help="Writable layers: tmpfs (in memory, charged to each "
                                        "container's memory limit, gone with it; the default with --rm) or "
                                        "snapshot (an active snapshot each, on disk).")] = "auto",
) -> None:
    """Launch many containers: IMAGE [CMD...] --count N, or --spec FILE.jsonl."""
    from ..batch import BatchProgress, entries_for, new_batch_id
    from ..errdefs import InvalidArgument
    from ..oci import expand_host_env
    from ..runner import ensure_image

    if fmt not in ("text", "json"):
        raise InvalidArgument(f"--format {fmt!r}: text or json")
    o = opts(ctx)
    client = o.client()
    ns = o.namespace
    specs = _read_specs(spec) if spec else None
    entries = entries_for(specs, image, args, count, expand_host_env(env or []), net)
    if specs is not None and env:
        for e in entries:
            e.env = expand_host_env(env or []) + e.env
    for name in sorted({e.image for e in entries}):
        if not name:
            raise InvalidArgument("batch run needs an image (or --spec entries that name one)")
        ensure_image(client, ns, name)
    bid = batch_id or new_batch_id()
    bar = _Progress()
    results: list[BatchResult] = []
    last: BatchProgress | None = None
    t0 = time.monotonic()
    stream = None
    try:
        stream = client.batch_run(entries, parallel=parallel, rm=rm, detach=detach, group_size=group_size,
                                  batch_id=bid, labels=_parse_labels(label), mode=mode, rootfs=rootfs,
                                  progress=True)
        for r in stream:
            if isinstance(r, BatchProgress):
                last = r
                bar.show(r)
                continue
            results.append(r)
            if fmt == "json":
                bar.clear()
                sys.stdout.write(json.dumps(r.to_dict() | {"batch_id": bid}, sort_keys=True) + "\n")
                sys.stdout.flush()
            elif r.error:
                bar.clear()
                print(f"pyctr: {r.id}: {r.error}", file=sys.stderr)
            elif detach:
                bar.clear()
                print(r.id)
            if last is not None:
                bar.show(last)
    except KeyboardInterrupt:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up below must finish
        bar.clear()
        if stream is not None:
            stream.close()
        if client.remote:
            _wait_daemon_cleanup(client, ns, bid, rm)
        what = "removed" if rm else "left running" if detach else "killed"
        print(f"pyctr: batch {bid} interrupted after {len(results)} results: stopped, what it started was {what}",
              file=sys.stderr)
        raise typer.Exit(130) from None
    finally:
        if stream is not None:
            stream.close()
    bar.clear()
    dt = time.monotonic() - t0
    failed = sum(1 for r in results if r.error)
    exited = [r for r in results if not r.error and r.exit_status is not None]
    nonzero = sum(1 for r in exited if r.exit_status)
    running = sum(1 for r in results if not r.error and r.exit_status is None)
    rate = len(results) / dt if dt > 0 else 0.0
    parts = [f"{len(results)} containers"]
    if running:
        parts.append(f"{running} running")
    if exited:
        parts.append(f"{len(exited)} exited ({nonzero} non-zero)")
    parts.append(f"{failed} failed")
    print(f"batch {bid}: {', '.join(parts)} in {dt:.2f} s = {rate:.1f}/s", file=sys.stderr)
    if not client.remote:
        # as ``pyctr run`` does: leave without closing the engine -- closing SQLite checkpoints its WAL
        # (after a batch, a few fsyncs: more than the rest of the teardown); the next open does it
        from ..runner import exit_now

        exit_now(1 if failed else 0)
    if failed:
        raise typer.Exit(1)


@app.command("rm")
def rm_cmd(
    ctx: typer.Context,
    batch_ids: Annotated[list[str] | None, typer.Argument(metavar="[BATCH_ID]...",
                                                          help="Batch ids (label pyctr.batch.id).",
                                                          show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE: remove containers with this "
                                                    "label (several: all must match).")] = None,
    parallel: Annotated[int, typer.Option("--parallel", "-P", help="Removals at once.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Remove a batch at once: running tasks killed, containers, snapshots and records removed."""
    from ..batch import LABEL_BATCH_ID
    from ..errdefs import InvalidArgument

    labels = _parse_labels(label)
    if not labels and not batch_ids:
        raise InvalidArgument("batch rm needs --label KEY=VALUE or a batch id")
    o = opts(ctx)
    from ..runner import service

    svc = service(o.client())
    conds = [f"labels.{json.dumps(k)}=={json.dumps(v)}" if v else f"labels.{json.dumps(k)}"
             for k, v in sorted(labels.items())]
    filters = [",".join([*conds, f"labels.{json.dumps(LABEL_BATCH_ID)}=={json.dumps(b)}"])
               for b in batch_ids or []] or [",".join(conds)]
    t0 = time.monotonic()
    n = failed = 0
    for r in svc.batch_remove(o.namespace, filters, parallel):
        n += 1
        if r.get("error"):
            failed += 1
            print(f"pyctr: {r['id']}: {r['error']}", file=sys.stderr)
        elif not quiet:
            print(r["id"])
    print(f"removed {n - failed} containers in {time.monotonic() - t0:.2f} s"
          + (f", {failed} failed" if failed else ""), file=sys.stderr)
    if failed:
        raise typer.Exit(1)
