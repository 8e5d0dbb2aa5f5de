"""Image fixtures (a pytest plugin, loaded from conftest): OCI layouts to push to a test registry.

* ``busybox_layout`` (session) -- a one-platform busybox image built with ``umoci`` from the
  ``busybox-static`` binary, as the acceptance checks build it: OCI layout at ``.path``, tag ``latest``.
* ``multiarch_layout`` (session) -- an OCI layout whose tag ``multi`` is an index of two manifests:
  ``linux/amd64`` (the busybox image) and ``linux/arm64`` (a small image with a different layer).
* ``big_layout`` (session) -- an image with one config and a 48 MiB incompressible uncompressed layer
  plus two small ones (for resume, stall and parallel tests), built in Python.
* :func:`build_layout` -- write an OCI layout from layer tars and a config, without umoci.
* :func:`skopeo_push` -- copy ``oci:<layout>:<tag>`` to ``docker://<registry>/<repo>``.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Layout:
    """An OCI image layout on disk and what it holds."""

    path: Path
    tag: str
    root_digest: str
    root_media_type: str
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size of every blob under the tag
    layers: list[str] = field(default_factory=list)  # layer digests of the (first) manifest

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.path}:{self.tag}"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages: umoci skopeo busybox-static)")


def _write_blob(layout: Path, data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    d = layout / "blobs" / "sha256"
    d.mkdir(parents=True, exist_ok=True)
    (d / hexd).write_bytes(data)
    return f"sha256:{hexd}"


def _read_index(layout: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return doc


def _write_index(layout: Path, doc: Mapping[str, Any]) -> None:
    (layout / "index.json").write_text(json.dumps(doc))


def tar_of(files: Mapping[str, bytes], mode: int = 0o644) -> bytes:
    """A tar holding ``files`` (path -> content), deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = mode
            ti.mtime = 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def build_layout(
    path: Path,
    tag: str,
    layers: Sequence[bytes],
    *,
    arch: str = "amd64",
    os_: str = "linux",
    variant: str = "",
    cmd: Sequence[str] = ("sh",),
) -> Layout:
    """Write (or add to) an OCI layout: ``layers`` (tar bytes, stored gzip-compressed, as registries want
    them), a config, a manifest."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    if not (path / "index.json").exists():
        _write_index(path, {"schemaVersion": 2, "manifests": []})
    blobs: dict[str, int] = {}
    layer_descs = []
    diff_ids = []
    for data in layers:
        gz = gzip.compress(data, compresslevel=1, mtime=0)
        d = _write_blob(path, gz)
        blobs[d] = len(gz)
        layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": len(gz)})
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
    config: dict[str, Any] = {
        "architecture": arch,
        "os": os_,
        "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if variant:
        config["variant"] = variant
    cbytes = json.dumps(config).encode()
    cd = _write_blob(path, cbytes)
    blobs[cd] = len(cbytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(cbytes)},
        "layers": layer_descs,
    }
    mbytes = json.dumps(manifest).encode()
    md = _write_blob(path, mbytes)
    blobs[md] = len(mbytes)
    idx = _read_index(path)
    idx["manifests"] = [
        m
        for m in idx["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    idx["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": md,
            "size": len(mbytes),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    _write_index(path, idx)
    return Layout(path, tag, md, OCI_MANIFEST, blobs, [x["digest"] for x in layer_descs])


def _walk_layout(path: Path, desc: Mapping[str, Any], blobs: dict[str, int], layers: list[str]) -> None:
    """Collect every blob under ``desc``; ``layers`` gets the layers of the first manifest met."""
    blobs[desc["digest"]] = desc["size"]
    if desc["mediaType"] not in (OCI_MANIFEST, OCI_INDEX):
        return
    doc = json.loads((path / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    if desc["mediaType"] == OCI_INDEX:
        for c in doc["manifests"]:
            _walk_layout(path, c, blobs, layers)
        return
    first = not layers
    _walk_layout(path, doc["config"], blobs, layers)
    for ly in doc["layers"]:
        if first:
            layers.append(ly["digest"])
        _walk_layout(path, ly, blobs, layers)


def _layout_from_tag(path: Path, tag: str) -> Layout:
    for m in _read_index(path)["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            blobs: dict[str, int] = {}
            layers: list[str] = []
            _walk_layout(path, m, blobs, layers)
            return Layout(path, tag, m["digest"], m["mediaType"], blobs, layers)
    raise LookupError(f"no tag {tag} in {path}")


def umoci_busybox(path: Path) -> Layout:
    """The acceptance checks' busybox image (lib/common.sh ``acc_busybox``), built with umoci."""
    _need("umoci", "busybox")
    bundle = path.parent / (path.name + "-bundle")
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    run("umoci", "init", "--layout", str(path))
    run("umoci", "new", "--image", f"{path}:latest")
    run("umoci", "unpack", "--image", f"{path}:latest", str(bundle))
    rootfs = bundle / "rootfs"
    for d in ("bin", "etc", "tmp", "root"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)
    bb = shutil.which("busybox")
    assert bb is not None
    shutil.copy2(bb, rootfs / "bin" / "busybox")
    applets = subprocess.run([bb, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox" and not (rootfs / "bin" / a).exists():
            os.symlink("busybox", rootfs / "bin" / a)
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    run("umoci", "repack", "--image", f"{path}:latest", str(bundle))
    run(
        "umoci",
        "config",
        "--image",
        f"{path}:latest",
        "--config.cmd",
        "sh",
        "--config.env",
        "PATH=/bin",
        "--architecture",
        "amd64",
        "--os",
        "linux",
    )
    run("umoci", "gc", "--layout", str(path))
    shutil.rmtree(bundle, ignore_errors=True)
    return _layout_from_tag(path, "latest")


def add_index(path: Path, tag: str, entries: Sequence[tuple[Layout, dict[str, str]]]) -> Layout:
    """Add an index tagged ``tag`` listing each layout's manifest with a platform."""
    manifests = []
    for lay, platform in entries:
        manifests.append(
            {
                "mediaType": lay.root_media_type,
                "digest": lay.root_digest,
                "size": lay.blobs[lay.root_digest],
                "platform": platform,
            }
        )
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    data = json.dumps(doc).encode()
    d = _write_blob(path, data)
    idx = _read_index(path)
    idx["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": d,
            "size": len(data),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    _write_index(path, idx)
    return _layout_from_tag(path, tag)


def skopeo_push(
    layout: Layout,
    dest: str,
    *,
    tls_verify: bool = False,
    creds: str | None = None,
    cert_dir: str | None = None,
) -> None:
    """``skopeo copy --all oci:<layout>:<tag> docker://<dest>``."""
    _need("skopeo")
    cmd = [
        "skopeo",
        "copy",
        "-q",
        "--all",
        "--preserve-digests",
        f"--dest-tls-verify={'true' if tls_verify else 'false'}",
    ]
    if creds:
        cmd.append(f"--dest-creds={creds}")
    if cert_dir:
        cmd.append(f"--dest-cert-dir={cert_dir}")
    cmd += [layout.oci_ref, f"docker://{dest}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"skopeo push to {dest} failed: {proc.stderr}"


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return umoci_busybox(tmp_path_factory.mktemp("images") / "busybox")


@pytest.fixture(scope="session")
def multiarch_layout(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Layout) -> Layout:
    path = tmp_path_factory.mktemp("images") / "multi"
    shutil.copytree(busybox_layout.path, path)
    amd = _layout_from_tag(path, "latest")
    arm = build_layout(path, "arm64", [tar_of({"hello-arm64.txt": b"arm64 layer\n"})], arch="arm64")
    return add_index(
        path,
        "multi",
        [
            (amd, {"os": "linux", "architecture": "amd64"}),
            (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
    )


BIG_LAYER_SIZE = 48 << 20


@pytest.fixture(scope="session")
def big_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    path = tmp_path_factory.mktemp("images") / "big"
    big = tar_of({"big.bin": os.urandom(BIG_LAYER_SIZE)})
    small1 = tar_of({"a.txt": b"a" * 1000})
    small2 = tar_of({"b.bin": os.urandom(300_000)})
    return build_layout(path, "latest", [small1, big, small2])
