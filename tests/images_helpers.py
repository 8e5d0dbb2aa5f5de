"""Builders for the image tests: OCI layouts written by hand (fast, any shape, any defect), the
acceptance check's whiteout image made by ``umoci``, and archives of them.  (The busybox layout is
``busybox_layout`` from ``fixtures_images``.)"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

#: file content, None for a directory, ("symlink", target) for a symlink
Entry = bytes | None | tuple[str, str]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(files: Mapping[str, Entry]) -> bytes:
    """A layer tar with ``files`` in order (``dir/.wh.name`` whiteouts are plain empty files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, content in files.items():
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            if content is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif isinstance(content, tuple):
                ti.type, ti.linkname = tarfile.SYMTYPE, content[1]
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(content), 0o644
                t.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


@dataclass
class Layout:
    """An OCI image layout directory under construction."""

    path: Path
    index: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def put(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        d = sha256(data)
        (self.path / "blobs" / "sha256" / d.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": d, "size": len(data), **extra}

    def image(self, layers: list[Mapping[str, Entry]], *, arch: str = "amd64", os_: str = "linux",
              gzip_layers: bool = False, cmd: list[str] | None = None) -> dict[str, Any]:
        """Write layers, config and manifest; return the manifest's descriptor."""
        descs, diff_ids = [], []
        for files in layers:
            raw = tar_layer(files)
            diff_ids.append(sha256(raw))
            if gzip_layers:
                descs.append(self.put(gzip.compress(raw, mtime=0), OCI_LAYER_GZIP))
            else:
                descs.append(self.put(raw, OCI_LAYER))
        cfg = {"architecture": arch, "os": os_, "config": {"Cmd": cmd or ["sh"]},
               "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        config = self.put(json.dumps(cfg).encode(), OCI_CONFIG)
        man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": descs}
        return self.put(json.dumps(man).encode(), OCI_MANIFEST)

    def multi(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        idx = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.put(json.dumps(idx).encode(), OCI_INDEX)

    def add(self, desc: dict[str, Any], name: str | None = None, **annotations: str) -> None:
        d = dict(desc)
        ann = dict(annotations)
        if name is not None:
            ann[REF_NAME] = name
        if ann:
            d["annotations"] = ann
        self.index.append(d)

    def write_index(self) -> None:
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.index}))

    def blob(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.split(":")[1]

    def tar(self, out: Path) -> Path:
        self.write_index()
        tar_dir(self.path, out)
        return out


def tar_dir(src: Path, out: Path) -> Path:
    """``(cd src && tar -cf out .)``."""
    subprocess.run(["tar", "-C", str(src), "-cf", str(out), "."], check=True)
    return out


def whiteout_layout(dest: Path) -> Path:
    """The acceptance check's 3-layer image, made by umoci (tag ``t``): base with a/x a/y d/old o/o1;
    then a/x deleted, d removed, o emptied and o/o2 added; then d recreated with d/new."""
    lay, bundle = dest / "layout", dest / "bundle"

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    run("umoci", "init", "--layout", str(lay))
    run("umoci", "new", "--image", f"{lay}:t")
    run("umoci", "unpack", "--image", f"{lay}:t", str(bundle))
    r = bundle / "rootfs"
    for d in ("a", "d", "o"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (r / "a" / "x").write_text("x\n")
    (r / "a" / "y").write_text("y\n")
    (r / "d" / "old").write_text("old\n")
    (r / "o" / "o1").write_text("o1\n")
    # --refresh-bundle: each repack on top of the previous one (without it umoci makes one layer)
    run("umoci", "repack", "--refresh-bundle", "--image", f"{lay}:t", str(bundle))
    (r / "a" / "x").unlink()
    shutil.rmtree(r / "d")
    (r / "o" / "o1").unlink()
    (r / "o" / "o2").write_text("o2\n")
    run("umoci", "repack", "--refresh-bundle", "--image", f"{lay}:t", str(bundle))
    (r / "d").mkdir()
    (r / "d" / "new").write_text("new\n")
    run("umoci", "repack", "--image", f"{lay}:t", str(bundle))
    run("umoci", "config", "--image", f"{lay}:t", "--config.cmd", "sh", "--architecture", "amd64",
        "--os", "linux")
    shutil.rmtree(bundle)
    return lay
