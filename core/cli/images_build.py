"""``pyctr images build-busybox``: a tiny local image from the host's busybox-static (no registry)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._state import opts


def build_busybox(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Image name.")] = "localhost/busybox:latest",
    busybox: Annotated[str, typer.Option("--busybox", show_default=False,
                                         help="The static busybox to copy [default: /bin/busybox].")] = "",
    unpack: Annotated[bool, typer.Option("--unpack/--no-unpack", help="Unpack it now.")] = True,
    user: Annotated[str, typer.Option("--user", help="The image's User.", show_default=False)] = "",
    workdir: Annotated[str, typer.Option("--workdir", help="Its WorkingDir.", show_default=False)] = "",
) -> None:
    """Build a one-layer OCI image from the host's busybox-static: /bin/busybox and its applets,
    /etc/passwd, /etc/group, /tmp, /root; cmd sh, PATH=/bin."""
    from ..busybox_image import build_image

    o = opts(ctx)
    images = o.client().plugin("images")
    overrides = {k: v for k, v in (("User", user), ("WorkingDir", workdir)) if v}
    img = build_image(images, o.namespace, name, busybox or None, overrides)
    if unpack:
        images.unpack(o.namespace, img.name)
    print(f"{img.name} {img.target.digest}")


def register(images_app: typer.Typer) -> None:
    images_app.command("build-busybox")(build_busybox)
