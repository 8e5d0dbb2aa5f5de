"""``pyctr images pull`` and ``pyctr images push``: the registry side of the images noun.

Pull = fetch the graph into the content store (``distribution`` plugin) + create or update the image
record + unpack (``images`` plugin), all under one temporary lease so the garbage collector never sees
half a pull.  Progress: one line per blob on stderr while stderr is a terminal; a summary line always.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from ._state import opts

if TYPE_CHECKING:
    from pyctr.plugins.distribution.registry.pull import ProgressEvent


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class ProgressRenderer:
    """Draws one line per blob (``layer-sha256:abcd…  downloading  12.3 MB / 40.0 MB``) and redraws them
    in place at most ten times a second.  Thread-safe; silent when ``out`` is not a terminal."""

    def __init__(self, out: TextIO | None = None, enabled: bool | None = None) -> None:
        self.out = out or sys.stderr
        self.enabled = self.out.isatty() if enabled is None else enabled
        self.lines: dict[str, str] = {}
        self.drawn = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, ev: ProgressEvent) -> None:
        if not self.enabled:
            return
        short = f"{ev.kind}-{ev.digest.split(':', 1)[-1][:12]}"
        if ev.state in ("downloading", "uploading", "retrying") and ev.total:
            pct = 100.0 * ev.offset / ev.total
            bar_w = 20
            filled = int(bar_w * ev.offset / ev.total)
            text = (f"{short}  {ev.state:<11} [{'=' * filled}{' ' * (bar_w - filled)}] {pct:5.1f}%  "
                    f"{_mb(ev.offset)} / {_mb(ev.total)}")
            if ev.resumed_from:
                text += f"  (resumed at {_mb(ev.resumed_from)})"
            if ev.message:
                text += f"  {ev.message}"
        else:
            text = f"{short}  {ev.state:<11} {_mb(ev.total)}" + (f"  {ev.message}" if ev.message else "")
        with self.lock:
            self.lines[ev.ref] = text
            now = time.monotonic()
            if ev.state in ("downloading", "uploading") and now - self.last < 0.1:
                return
            self.last = now
            self._draw()

    def _draw(self) -> None:
        cols = 120
        with contextlib.suppress(OSError, ValueError, AttributeError):
            cols = os.get_terminal_size(self.out.fileno()).columns
        buf = []
        if self.drawn:
            buf.append(f"\x1b[{self.drawn}F")
        for text in self.lines.values():
            buf.append("\x1b[2K" + text[: cols - 1 if cols >= 40 else 119] + "\n")
        self.out.write("".join(buf))
        self.out.flush()
        self.drawn = len(self.lines)

    def finish(self) -> None:
        if self.enabled and self.lines:
            with self.lock:
                self._draw()


def _summary(verb: str, name: str, digest: str, nbytes: int, blobs: int, seconds: float,
             extra: str = "") -> str:
    rate = nbytes / seconds / 1e6 if seconds > 0 else 0.0
    return (f"{name}: {verb} {digest}  {blobs} blobs, {_mb(nbytes)} in {seconds:.2f} s "
            f"({rate:.1f} MB/s){extra}")


def pull_image(
    ctx: typer.Context,
    ref: str,
    *,
    plain_http: bool,
    platforms: list[str] | None,
    all_platforms: bool,
    user: str | None,
    no_unpack: bool,
    snapshotter: str | None,
) -> None:
    o = opts(ctx)
    ns = o.namespace
    images = o.client().plugin("images")
    renderer = ProgressRenderer()
    t0 = time.monotonic()
    res: Any = None
    unpacked = ""
    for item in images.pull(ns, ref, platforms=platforms or None, all_platforms=all_platforms,
                            plain_http=plain_http, user=user, unpack=not no_unpack, snapshotter=snapshotter):
        if "progress" in item:
            renderer(item["progress"])
        else:
            res = item["result"]
            if not no_unpack:
                top = item["top"]
                unpacked = f"; unpacked ({top[:19]})" if top else "; unpacked"
    renderer.finish()
    seconds = time.monotonic() - t0
    extra = ""
    if res.bytes_resumed:
        extra = f", resumed after {_mb(res.bytes_resumed)}"
    if res.fetched < res.blobs:
        extra += f", {res.blobs - res.fetched} already present"
    print(_summary("pulled", res.name, res.target.digest, res.bytes_fetched, res.blobs, seconds,
                   extra + unpacked))


def push_image(
    ctx: typer.Context,
    ref: str,
    local: str | None,
    *,
    plain_http: bool,
    user: str | None,
    platforms: list[str] | None,
) -> None:
    from ..reference import parse

    o = opts(ctx)
    client = o.client()
    ns = o.namespace
    images = client.plugin("images")
    dist = client.plugin("distribution")
    image = images.resolve(ns, local or ref)
    target = parse(ref)
    renderer = ProgressRenderer()
    outcome: dict[str, tuple[str, int]] = {}  # blob digest -> (done | mounted | exists, size)
    lock = threading.Lock()

    def progress(ev: Any) -> None:
        if ev.state in ("done", "mounted", "exists") and ev.kind in ("layer", "config", "unknown"):
            with lock:
                outcome[ev.digest] = (ev.state, ev.total)
        renderer(ev)

    t0 = time.monotonic()
    dist.push(ns, str(target), image.target, plain_http=plain_http, user=user, platforms=platforms or None,
              progress=progress)
    renderer.finish()
    seconds = time.monotonic() - t0
    sent = [size for state, size in outcome.values() if state == "done"]
    mounted = sum(1 for state, _ in outcome.values() if state == "mounted")
    present = sum(1 for state, _ in outcome.values() if state == "exists")
    extra = (f", {mounted} mounted" if mounted else "") + (f", {present} already there" if present else "")
    print(_summary("pushed", str(target), image.target.digest, sum(sent), len(sent), seconds, extra))


PlainHttp = Annotated[bool, typer.Option("--plain-http", help="Talk HTTP, not HTTPS, to the registry.")]
Platforms = Annotated[list[str] | None, typer.Option(
    "--platform", help="os/arch[/variant] to fetch (repeatable); default: the host's.")]
User = Annotated[str | None, typer.Option("--user", "-u", help="user:password for the registry.")]


def pull(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Image reference, e.g. busybox or host:5000/repo:tag.")],
    plain_http: PlainHttp = False,
    platform: Platforms = None,
    all_platforms: Annotated[bool, typer.Option("--all-platforms", help="Fetch every platform.")] = False,
    user: User = None,
    no_unpack: Annotated[bool, typer.Option("--no-unpack", help="Fetch only; do not unpack.")] = False,
    snapshotter: Annotated[str | None, typer.Option("--snapshotter", help="Snapshotter to unpack into.")
                           ] = None,
) -> None:
    """Pull an image from a registry: fetch its content, record it, unpack it."""
    pull_image(ctx, ref, plain_http=plain_http, platforms=platform, all_platforms=all_platforms,
               user=user, no_unpack=no_unpack, snapshotter=snapshotter)


def push(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Where to push: host[:port]/repo[:tag].")],
    local: Annotated[str | None, typer.Argument(help="Local image to push (default: REF).")] = None,
    plain_http: PlainHttp = False,
    user: User = None,
    platform: Platforms = None,
) -> None:
    """Push an image to a registry: blobs first, then manifests, then the index."""
    push_image(ctx, ref, local, plain_http=plain_http, user=user, platforms=platform)


def register(app: typer.Typer) -> None:
    """Add ``pull`` and ``push`` to the ``images`` sub-app."""
    app.command("pull")(pull)
    app.command("push")(push)
