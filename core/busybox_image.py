"""A tiny local OCI image from the host's ``busybox-static``, for running containers with no registry.

:func:`build_layer` makes one reproducible ``tar+gzip`` layer: ``/bin/busybox`` plus a symlink per
applet (``busybox --list``), ``/etc/passwd`` (root, nobody), ``/etc/group``, ``/tmp`` (1777) and
``/root``.  :func:`build_image` writes the layer, an image config (``Cmd ["sh"]``, ``Env
["PATH=/bin"]``) and an OCI manifest into the content store through the images service, then creates
(or re-points) the image record.  The same busybox binary always gives the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import mediatypes as mt
from .content import Descriptor
from .errdefs import AlreadyExists, FailedPrecondition, NotFound

DEFAULT_NAME = "localhost/busybox:latest"
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"
_CREATED = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Layer:
    """A layer's compressed bytes and its ids."""

    blob: bytes
    digest: str
    diff_id: str


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def find_busybox(path: str | None = None) -> str:
    """The static busybox to copy: ``path``, else ``/bin/busybox``, else ``busybox`` on ``PATH``."""
    for cand in ([path] if path else ["/bin/busybox", "/usr/bin/busybox", shutil.which("busybox") or ""]):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise NotFound(
        f"no busybox binary at {path}" if path else
        "no busybox binary found: install busybox-static (apt-get install busybox-static)"
    )


def applets(busybox: str) -> list[str]:
    try:
        out = subprocess.run([busybox, "--list"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise FailedPrecondition(f"{busybox} --list failed: {e}") from None
    names = sorted({a.strip() for a in out.splitlines() if a.strip() and "/" not in a})
    return [a for a in names if a != "busybox"]


def _info(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def build_layer(busybox: str) -> Layer:
    """The layer tar (gzip, mtime 0) and its digests."""
    with open(busybox, "rb") as f:
        binary = f.read()
    names = applets(busybox)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_file(name: str, data: bytes, mode: int) -> None:
            tar.addfile(_info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))

        tar.addfile(_info("bin", tarfile.DIRTYPE, 0o755))
        add_file("bin/busybox", binary, 0o755)
        for a in names:
            tar.addfile(_info(f"bin/{a}", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        tar.addfile(_info("etc", tarfile.DIRTYPE, 0o755))
        add_file("etc/passwd", _PASSWD.encode(), 0o644)
        add_file("etc/group", _GROUP.encode(), 0o644)
        tar.addfile(_info("root", tarfile.DIRTYPE, 0o700))
        tar.addfile(_info("tmp", tarfile.DIRTYPE, 0o1777))
    data = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as z:
        z.write(data)
    blob = gz.getvalue()
    return Layer(blob, _sha256(blob), _sha256(data))


def _arch() -> str:
    from .platforms import host

    return host().architecture


def image_config(layer: Layer, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The image config; ``overrides`` replace keys of its ``config`` (``User``, ``WorkingDir``, ...)."""
    return {
        "created": _CREATED,
        "architecture": _arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], **dict(overrides or {})},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": _CREATED, "created_by": "pyctr images build-busybox"}],
    }


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _desc(media_type: str, blob: bytes) -> Descriptor:
    return Descriptor(media_type=media_type, digest=_sha256(blob), size=len(blob))


def build_image(images: Any, ns: str, name: str = DEFAULT_NAME, busybox: str | None = None,
                config: Mapping[str, Any] | None = None) -> Any:
    """Write the image's blobs into ``ns`` through the images service ``images`` and create (or
    update) the record ``name``.  ``config`` overrides keys of the image's ``config`` object.  Returns
    the image record."""
    from .images import Image, child_gc_labels
    from .images import ingest_ref as _ingest_ref

    layer = build_layer(find_busybox(busybox))
    config_blob = _json(image_config(layer, config))
    layer_desc = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=layer.digest, size=len(layer.blob))
    config_desc = _desc(mt.OCI_CONFIG, config_blob)
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config_desc.to_oci(),
        "layers": [layer_desc.to_oci()],
    })
    manifest_desc = _desc(mt.OCI_MANIFEST, manifest)
    cs = images.content
    blobs = [
        (layer_desc, layer.blob, {"containerd.io/uncompressed": layer.diff_id}),
        (config_desc, config_blob, {}),
        (manifest_desc, manifest, child_gc_labels(manifest_desc, [config_desc, layer_desc])),
    ]
    with images.temporary_lease(ns, "build-busybox") as lease:
        for desc, data, labels in blobs:
            images.lease_add(ns, lease, "content", desc.digest)
            try:
                w = cs.writer(ns, _ingest_ref(desc), len(data), desc.digest)
            except AlreadyExists:
                if labels:
                    images.set_blob_labels(ns, desc.digest, labels)
                continue
            try:
                w.write(data)
                w.commit(len(data), desc.digest, labels)
            except AlreadyExists:
                pass
            except BaseException:
                w.abort()
                raise
            finally:
                w.close()
        return images.create_or_update(ns, Image(name=name, target=manifest_desc))
