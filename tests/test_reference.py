"""Reference parsing and normalisation, media types, and the image graph helpers."""

from __future__ import annotations

import hashlib
import json

import pytest
from pyctr import images as img
from pyctr import mediatypes as mt
from pyctr.content import Descriptor
from pyctr.errdefs import DataLoss, InvalidArgument, NotFound, NotImplementedErr
from pyctr.reference import Reference, normalize, parse

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("given", "want"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("user/app:1.0", "docker.io/user/app:1.0"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/user/app", "docker.io/user/app:latest"),
    ("127.0.0.1:5000/acc/busybox:1", "127.0.0.1:5000/acc/busybox:1"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("ghcr.io/org/sub/repo:v1.2.3-rc.1", "ghcr.io/org/sub/repo:v1.2.3-rc.1"),
    (f"alpine@{D}", f"docker.io/library/alpine@{D}"),
    (f"alpine:3.19@{D}", f"docker.io/library/alpine:3.19@{D}"),
    (f"host:5000/a/b:t@{D}", f"host:5000/a/b:t@{D}"),
    ("[::1]:5000/repo:t", "[::1]:5000/repo:t"),
    ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest"),
])
def test_normalize(given: str, want: str) -> None:
    assert normalize(given) == want
    assert normalize(want) == want  # idempotent


def test_fields_and_familiar_name() -> None:
    r = parse("busybox")
    assert r == Reference("docker.io", "library/busybox", "latest", "")
    assert r.familiar_name == "busybox" and r.familiar == "busybox:latest"
    assert parse("user/app:2").familiar_name == "user/app"
    r2 = parse(f"127.0.0.1:5000/acc/busybox:1@{D}")
    assert (r2.domain, r2.path, r2.tag, r2.digest) == ("127.0.0.1:5000", "acc/busybox", "1", D)
    assert r2.familiar_name == "127.0.0.1:5000/acc/busybox"
    assert r2.name == "127.0.0.1:5000/acc/busybox" and r2.object == D
    assert parse("x:5").object == "5"
    assert Reference.from_dict(r2.to_dict()) == r2
    assert parse("busybox", default_tag=False).tag == ""
    assert str(r.with_tag("2")) == "docker.io/library/busybox:2"


@pytest.mark.parametrize("bad", [
    "", " busybox", "Busybox", "busybox:", "busybox:-x", "a//b", "a/b/", "/a", "busybox@sha256:abc",
    "busybox@sha256:" + "AB" * 32, "-a/b", "a" * 64, "repo:" + "t" * 129, "host:port/x",
    "a b", "UPPER.example/Repo",
])
def test_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        parse(bad)
    assert "\n" not in str(ei.value)


def test_uppercase_domain_is_a_domain() -> None:
    # an upper-case first component can only be a host name (repository paths are lower case)
    assert parse("Registry.Example/repo").domain == "Registry.Example"


def test_media_types() -> None:
    assert mt.is_index(mt.OCI_INDEX) and mt.is_index(mt.DOCKER_MANIFEST_LIST)
    assert mt.is_manifest(mt.OCI_MANIFEST) and mt.is_manifest(mt.DOCKER_MANIFEST + "; charset=utf-8")
    assert mt.is_config(mt.DOCKER_CONFIG) and mt.is_config(mt.OCI_CONFIG)
    for t, comp in [(mt.OCI_LAYER, ""), (mt.OCI_LAYER_GZIP, "gzip"), (mt.OCI_LAYER_ZSTD, "zstd"),
                    (mt.DOCKER_LAYER_GZIP, "gzip"), (mt.DOCKER_LAYER, ""), (mt.DOCKER_FOREIGN_LAYER, "gzip")]:
        assert mt.is_layer(t) and mt.layer_compression(t) == comp
    with pytest.raises(NotImplementedErr):
        mt.layer_compression(mt.OCI_LAYER_GZIP + "+encrypted")
    with pytest.raises(InvalidArgument):
        mt.layer_compression(mt.OCI_CONFIG)
    assert mt.layer_type("zstd") == mt.OCI_LAYER_ZSTD
    assert mt.layer_type("gzip", docker=True) == mt.DOCKER_LAYER_GZIP
    assert [mt.kind(t) for t in (mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.OCI_CONFIG, mt.OCI_LAYER, "x/y")] == [
        "index", "manifest", "config", "layer", "unknown"]
    with pytest.raises(NotImplementedErr) as ei:
        mt.check_supported(mt.DOCKER_SCHEMA1_SIGNED)
    assert "schema 1" in str(ei.value)
    assert mt.detect(b'{"schemaVersion":2,"manifests":[]}') == mt.OCI_INDEX
    assert mt.detect(b'{"schemaVersion":2,"config":{},"layers":[]}') == mt.OCI_MANIFEST
    with pytest.raises(NotImplementedErr):
        mt.detect(b'{"schemaVersion":1,"fsLayers":[]}')


def _blob(doc: object) -> tuple[bytes, str]:
    data = json.dumps(doc).encode()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _desc(mt_: str, n: int) -> dict[str, object]:
    return {"mediaType": mt_, "digest": "sha256:" + f"{n:064x}", "size": n}


def test_children_and_gc_labels() -> None:
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": _desc(mt.OCI_CONFIG, 1),
                "layers": [_desc(mt.OCI_LAYER_GZIP, 2), _desc(mt.OCI_LAYER_GZIP, 3)]}
    data, d = _blob(manifest)
    desc = Descriptor(mt.OCI_MANIFEST, d, len(data))
    kids = img.children(desc, data)
    assert [k.size for k in kids] == [1, 2, 3]
    labels = img.child_gc_labels(desc, kids)
    assert labels == {
        "containerd.io/gc.ref.content.config": kids[0].digest,
        "containerd.io/gc.ref.content.l.0": kids[1].digest,
        "containerd.io/gc.ref.content.l.1": kids[2].digest,
    }
    index = {"schemaVersion": 2, "manifests": [_desc(mt.OCI_MANIFEST, 4), _desc(mt.DOCKER_MANIFEST, 5),
                                                _desc("application/x-other", 6)]}
    idata, idg = _blob(index)
    ik = img.children(Descriptor(mt.OCI_INDEX, idg, len(idata)), idata)
    assert img.child_gc_labels(Descriptor(mt.OCI_INDEX, idg, 1), ik) == {
        "containerd.io/gc.ref.content.m.0": ik[0].digest,
        "containerd.io/gc.ref.content.m.1": ik[1].digest,
        "containerd.io/gc.ref.content.0": ik[2].digest,
    }
    # a document whose own mediaType contradicts its descriptor is refused
    with pytest.raises(DataLoss):
        img.children(Descriptor(mt.OCI_INDEX, d, len(data)), data)
    assert img.ingest_ref(desc) == f"manifest-{d}"
    assert img.merge_distribution_source("b,a", "c") == "a,b,c"
    assert img.merge_distribution_source("a", "a") == "a"


def test_manifest_for_platform_and_chain_ids() -> None:
    blobs: dict[str, bytes] = {}

    def put(doc: object) -> Descriptor:
        data, d = _blob(doc)
        blobs[d] = data
        return Descriptor(mt.OCI_MANIFEST, d, len(data))

    def manifest(arch: str) -> Descriptor:
        cfg_data, cfg_d = _blob({"architecture": arch, "os": "linux", "rootfs": {"diff_ids": []}})
        blobs[cfg_d] = cfg_data
        return put({"schemaVersion": 2, "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg_d,
                                                   "size": len(cfg_data)}, "layers": []})

    amd, arm7, arm64 = manifest("amd64"), manifest("arm"), manifest("arm64")
    entries = [
        {**arm7.to_oci(), "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {**arm64.to_oci(), "platform": {"os": "linux", "architecture": "arm64"}},
        {**amd.to_oci(), "platform": {"os": "linux", "architecture": "amd64"}},
    ]
    idata, idg = _blob({"schemaVersion": 2, "manifests": entries})
    blobs[idg] = idata
    index = Descriptor(mt.OCI_INDEX, idg, len(idata))

    def read(d: Descriptor) -> bytes:
        return blobs[d.digest]

    from pyctr import platforms as plat

    assert img.manifest_for_platform(read, index, plat.only("linux/amd64")).digest == amd.digest
    assert img.manifest_for_platform(read, index, plat.only("linux/arm64")).digest == arm64.digest
    assert img.manifest_for_platform(read, index, plat.only("linux/arm/v8")).digest == arm7.digest
    with pytest.raises(NotFound) as ei:
        img.manifest_for_platform(read, index, plat.only("linux/s390x"))
    assert "linux/arm/v7, linux/arm64, linux/amd64" in str(ei.value)
    # no platform in the index entry: the config decides
    bare = Descriptor(mt.OCI_INDEX, *_reg(blobs, {"schemaVersion": 2, "manifests": [arm64.to_oci()]}))
    with pytest.raises(NotFound):
        img.manifest_for_platform(read, bare, plat.only("linux/amd64"))
    assert img.manifest_for_platform(read, bare, plat.only("linux/arm64")).digest == arm64.digest

    a, b, c = ("sha256:" + x * 64 for x in "abc")
    ids = img.chain_ids([a, b, c])
    assert ids[0] == a
    assert ids[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert ids[2] == "sha256:" + hashlib.sha256(f"{ids[1]} {c}".encode()).hexdigest()
    assert img.chain_id([a, b, c]) == ids[2]


def _reg(blobs: dict[str, bytes], doc: object) -> tuple[str, int]:
    data, d = _blob(doc)
    blobs[d] = data
    return d, len(data)


def test_config_and_image_record() -> None:
    cfg = img.parse_config(json.dumps({
        "architecture": "aarch64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Entrypoint": None, "WorkingDir": "/w", "User": "1:2",
                   "Labels": {"a": "b"}, "StopSignal": "SIGTERM", "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [D]},
    }).encode())
    assert str(cfg.platform) == "linux/arm64" and cfg.diff_ids == [D] and cfg.cmd == ["sh"]
    assert cfg.entrypoint == [] and cfg.working_dir == "/w" and cfg.exposed_ports == ["80/tcp"]
    with pytest.raises(DataLoss):
        img.parse_config(b'{"rootfs": {"diff_ids": ["nope"]}}')
    with pytest.raises(DataLoss):
        img.parse_config(b"[1]")
    rec = img.Image("docker.io/library/busybox:latest", Descriptor(mt.OCI_MANIFEST, D, 10), {"x": "y"})
    assert img.Image.from_dict(rec.to_dict()) == rec
