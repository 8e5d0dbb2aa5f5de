"""Archive import and export against real tools: skopeo (oci-archive, docker-archive), umoci layouts,
containerd's ``ctr images import``; broken archives leave nothing behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Roots
from images_helpers import OCI_LAYER, OCI_MANIFEST, Layout, sha256, tar_dir
from pyctr import Client
from pyctr.errdefs import DataLoss, InvalidArgument, NotFound, NotImplementedErr, PyctrError

NS = "default"
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")


@pytest.fixture(scope="session")
def busybox(busybox_layout: Any) -> Path:
    """The shared umoci busybox layout (tests/fixtures_images.py), tag ``latest``."""
    path: Path = busybox_layout.path
    return path


@pytest.fixture
def client(tmp_root: Roots) -> Iterator[Client]:
    c = Client(root=str(tmp_root.root), state=str(tmp_root.state), config=str(tmp_root.config))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def svc(client: Client) -> Any:
    return client.plugin("images")


def assert_empty(svc: Any, ns: str = NS) -> None:
    """Nothing an import could have left: records, content, ingests, leases."""
    assert svc.list(ns) == []
    assert svc.content.walk(ns) == []
    assert svc.content.list_statuses(ns) == []
    assert svc.md.leases.list(ns) == []


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", *args], check=True, capture_output=True, timeout=120)


# -- real tools in ---------------------------------------------------------------------------------


@needs_skopeo
def test_import_skopeo_oci_archive(svc: Any, busybox: Path, tmp_path: Path) -> None:
    out = tmp_path / "bb.tar"
    skopeo("copy", f"oci:{busybox}:latest", f"oci-archive:{out}:acc/bb:1")
    made = svc.import_archive(NS, str(out), unpack=False)
    assert [i.name for i in made] == ["acc/bb:1"]  # a full reference in ref.name is kept as-is
    chk = svc.check(NS, "acc/bb:1")
    assert chk["status"] == "complete" and chk["available"] == chk["required"] == 3
    # the manifest blob carries the GC labels to its config and layer
    info = svc.content.info(NS, made[0].target.digest)
    assert "containerd.io/gc.ref.content.config" in info.labels
    assert "containerd.io/gc.ref.content.l.0" in info.labels
    assert svc.md.leases.list(NS) == []


@needs_skopeo
def test_import_skopeo_docker_archive(svc: Any, busybox: Path, tmp_path: Path) -> None:
    out = tmp_path / "docker.tar"
    skopeo("copy", f"oci:{busybox}:latest", f"docker-archive:{out}:acc/fromdocker:3")
    made = svc.import_archive(NS, out, unpack=False)
    assert [i.name for i in made] == ["docker.io/acc/fromdocker:3"]  # RepoTags normalised
    img = made[0]
    assert img.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    ins = svc.inspect(NS, "docker.io/acc/fromdocker:3")
    # skopeo writes uncompressed layers: their digests are the config's diff ids
    assert [x["digest"] for x in ins["layers"]] == ins["config"]["rootfs"]["diff_ids"]
    assert ins["check"]["status"] == "complete"
    assert ins["platforms"] == ["linux/amd64"]
    # found by its short name too
    assert svc.resolve(NS, "acc/fromdocker:3").name == "docker.io/acc/fromdocker:3"


def test_import_umoci_layout_tar_with_base_name(svc: Any, busybox: Path, tmp_path: Path) -> None:
    tarball = tar_dir(busybox, tmp_path / "bb.tar")
    made = svc.import_archive(NS, tarball, base_name="acc/bb", unpack=False)
    assert [i.name for i in made] == ["acc/bb:latest"]
    # again without a base name: the date prefix containerd uses
    made = svc.import_archive(NS, tarball, unpack=False)
    assert made[0].name.startswith("import-") and made[0].name.endswith(":latest")
    # from a pipe (not seekable): spooled, same result
    with open(tarball, "rb") as f:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            with os.fdopen(w, "wb") as out:
                shutil.copyfileobj(f, out)
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as stream:
            made = svc.import_archive(NS, stream, base_name="acc/piped", unpack=False)
        os.waitpid(pid, 0)
    assert [i.name for i in made] == ["acc/piped:latest"]
    # a gzip-compressed archive
    gz = tmp_path / "bb.tar.gz"
    subprocess.run(f"gzip -c {tarball} > {gz}", shell=True, check=True)
    made2 = svc.import_archive(NS, gz, base_name="acc/gz", unpack=False)
    assert [i.name for i in made2] == ["acc/gz:latest"] and made2[0].target == made[0].target
    import zstandard

    zst = tmp_path / "bb.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(tarball.read_bytes()))
    made3 = svc.import_archive(NS, zst, base_name="acc/zst", unpack=False)
    assert made3[0].target == made[0].target
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(DataLoss):
        svc.import_archive("ns-cut", cut, unpack=False)
    assert_empty(svc, "ns-cut")


# -- export ----------------------------------------------------------------------------------------


@needs_skopeo
def test_export_read_by_skopeo_and_reimported(svc: Any, busybox: Path, tmp_path: Path) -> None:
    svc.import_archive(NS, tar_dir(busybox, tmp_path / "in.tar"), base_name="example.com/acc/bb",
                       unpack=False)
    img = svc.get(NS, "example.com/acc/bb:latest")
    out = tmp_path / "out.tar"
    svc.export_archive(NS, out, ["example.com/acc/bb:latest"])
    for transport in ("oci-archive", "docker-archive"):
        p = subprocess.run(["skopeo", "inspect", f"{transport}:{out}"], capture_output=True, text=True)
        assert p.returncode == 0, f"skopeo inspect {transport}: {p.stderr}"
        doc = json.loads(p.stdout)
        assert doc["Architecture"] == "amd64"
        assert len(doc["Layers"]) == 1
    with tarfile.open(out) as t:
        index = json.load(t.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert all(m.isreg() or m.isdir() for m in t.getmembers())
    ann = index["manifests"][0]["annotations"]
    assert ann["org.opencontainers.image.ref.name"] == "latest"
    assert ann["io.containerd.image.name"] == "example.com/acc/bb:latest"
    assert manifest[0]["RepoTags"] == ["example.com/acc/bb:latest"]
    # round trip into another namespace: same target
    made = svc.import_archive("other", out, unpack=False)
    assert [i.name for i in made] == ["example.com/acc/bb:latest"]
    assert made[0].target.digest == img.target.digest


def test_export_to_existing_path_is_atomic(svc: Any, busybox: Path, tmp_path: Path) -> None:
    svc.import_archive(NS, tar_dir(busybox, tmp_path / "in.tar"), base_name="acc/bb", unpack=False)
    out = tmp_path / "out.tar"
    out.write_bytes(b"old")
    with pytest.raises(NotFound):
        svc.export_archive(NS, out, ["acc/bb:latest", "acc/missing:1"])
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tar")] == []
    buf = io.BytesIO()
    svc.export_archive(NS, buf, ["acc/bb:latest"], skip_manifest_json=True)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        names = t.getnames()
    assert "index.json" in names and "oci-layout" in names and "manifest.json" not in names


# -- names -----------------------------------------------------------------------------------------


def test_names_from_annotations(svc: Any, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "lay")
    m1 = lay.image([{"f": b"1"}])
    m2 = lay.image([{"f": b"2"}])
    m3 = lay.image([{"f": b"3"}])
    lay.add(m1, "v1")
    lay.add(m2, "other/repo:2")  # outside --base-name: skipped, as containerd's FilterRefPrefix does
    lay.add(m3, **{"io.containerd.image.name": "docker.io/x/full:9"})
    made = svc.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/n", index_name="acc/idx:all",
                              unpack=False)
    assert sorted(i.name for i in made) == ["acc/idx:all", "acc/n:v1", "docker.io/x/full:9"]
    assert svc.get(NS, "acc/idx:all").target.media_type == "application/vnd.oci.image.index.v1+json"
    assert not svc.content.exists(NS, m2["digest"])  # nothing imported for the skipped entry
    # no base name: a full reference is kept, unnamed entries get <prefix>@<digest>
    lay2 = Layout(tmp_path / "lay2")
    lay2.add(lay2.image([{"g": b"1"}]), "other/repo:2")
    m5 = lay2.image([{"g": b"2"}])
    lay2.add(m5)
    names = sorted(i.name for i in svc.import_archive(NS, lay2.tar(tmp_path / "b.tar"), unpack=False))
    assert names[0].startswith("import-") and names[0].endswith("@" + m5["digest"])
    assert names[1] == "other/repo:2"


def test_multi_platform_index(svc: Any, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "lay")
    amd = lay.image([{"amd": b"a"}], arch="amd64")
    arm = lay.image([{"arm": b"b"}], arch="arm64")
    idx = lay.multi([{**amd, "platform": {"os": "linux", "architecture": "amd64"}},
                     {**arm, "platform": {"os": "linux", "architecture": "arm64"}},
                     {"mediaType": "application/vnd.example.sbom+json", "digest": sha256(b"none"),
                      "size": 4}])
    lay.add(idx, "multi")
    tarball = lay.tar(tmp_path / "m.tar")
    made = svc.import_archive(NS, tarball, base_name="acc/m", unpack=False)
    assert [i.name for i in made] == ["acc/m:multi"]
    assert svc.content.exists(NS, amd["digest"])
    assert not svc.content.exists(NS, arm["digest"])  # other platforms' content is skipped by default
    labels = svc.content.info(NS, idx["digest"]).labels
    assert labels["containerd.io/gc.ref.content.m.0"] == amd["digest"]
    assert labels["containerd.io/gc.ref.content.m.1"] == arm["digest"]
    assert svc.check(NS, "acc/m:multi")["status"] == "complete"
    assert svc.summary(NS, made[0])["platforms"] == ["linux/amd64", "linux/arm64"]
    svc.import_archive(NS, tarball, base_name="acc/m", all_platforms=True, unpack=False)
    assert svc.content.exists(NS, arm["digest"])
    # export of one platform, then all
    out = tmp_path / "out.tar"
    info = svc.export_archive(NS, out, ["acc/m:multi"], platforms=["linux/arm64"])
    assert info["blobs"] == 4  # index, arm manifest, its config and layer; nothing of amd64
    with tarfile.open(out) as t:
        assert f"blobs/sha256/{arm['digest'][7:]}" in t.getnames()
        assert f"blobs/sha256/{amd['digest'][7:]}" not in t.getnames()


# -- broken archives leave nothing ------------------------------------------------------------------


def _simple(tmp_path: Path) -> tuple[Layout, dict[str, Any]]:
    lay = Layout(tmp_path / "lay")
    man = lay.image([{"a": b"a" * 5000}, {"b": b"b"}])
    lay.add(man, "1")
    return lay, man


def _manifest(lay: Layout, man: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(lay.blob(man["digest"]).read_bytes())
    return doc


def _rewrite_manifest(lay: Layout, man: dict[str, Any], doc: dict[str, Any]) -> None:
    new = lay.put(json.dumps(doc).encode(), OCI_MANIFEST)
    lay.index = [new | {"annotations": {"org.opencontainers.image.ref.name": "1"}}]


def broken_bad_digest(lay: Layout, man: dict[str, Any]) -> None:
    layer = _manifest(lay, man)["layers"][0]
    p = lay.blob(layer["digest"])
    data = bytearray(p.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes
    p.write_bytes(bytes(data))


def broken_lying_size(lay: Layout, man: dict[str, Any]) -> None:
    doc = _manifest(lay, man)
    doc["layers"][1]["size"] -= 1
    _rewrite_manifest(lay, man, doc)


def broken_huge_claim(lay: Layout, man: dict[str, Any]) -> None:
    doc = _manifest(lay, man)
    doc["layers"][1]["size"] = 1 << 60
    _rewrite_manifest(lay, man, doc)


def broken_missing_blob(lay: Layout, man: dict[str, Any]) -> None:
    lay.blob(_manifest(lay, man)["layers"][1]["digest"]).unlink()


def broken_schema1(lay: Layout, man: dict[str, Any]) -> None:
    s1 = json.dumps({"schemaVersion": 1, "name": "x", "tag": "1", "fsLayers": []}).encode()
    lay.index.append(lay.put(s1, "application/vnd.docker.distribution.manifest.v1+prettyjws"))


def broken_ambiguous(lay: Layout, man: dict[str, Any]) -> None:
    doc = _manifest(lay, man)
    doc["manifests"] = []
    _rewrite_manifest(lay, man, doc)


def broken_bad_config(lay: Layout, man: dict[str, Any]) -> None:
    doc = _manifest(lay, man)
    cfg = lay.put(b'{"rootfs": {"diff_ids": ["nope"]}}', "application/vnd.oci.image.config.v1+json")
    doc["config"] = cfg
    _rewrite_manifest(lay, man, doc)


@pytest.mark.parametrize(("breaker", "error"), [
    (broken_bad_digest, DataLoss),
    (broken_lying_size, DataLoss),
    (broken_huge_claim, InvalidArgument),
    (broken_missing_blob, NotFound),
    (broken_schema1, NotImplementedErr),
    (broken_ambiguous, DataLoss),
    (broken_bad_config, DataLoss),
])
def test_broken_archive_leaves_nothing(svc: Any, tmp_path: Path, breaker: Any,
                                       error: type[Exception]) -> None:
    lay, man = _simple(tmp_path)
    breaker(lay, man)
    with pytest.raises(error):
        svc.import_archive(NS, lay.tar(tmp_path / "bad.tar"), base_name="acc/bad", unpack=False)
    assert_empty(svc)


def test_truncated_archive_leaves_nothing(svc: Any, tmp_path: Path) -> None:
    lay, man = _simple(tmp_path)
    big = _manifest(lay, man)["layers"][0]["digest"]
    lay.write_index()
    # put the big layer last, then cut the tar in its middle
    others = sorted(f"blobs/sha256/{p.name}" for p in lay.blob(big).parent.iterdir() if p.name != big[7:])
    order = ["oci-layout", "index.json", *others, f"blobs/sha256/{big[7:]}"]
    out = tmp_path / "t.tar"
    subprocess.run(["tar", "-C", str(lay.path), "-cf", str(out), *order], check=True)
    data = out.read_bytes()
    cut = data.index(b"a" * 512) + 1000  # inside the layer's contents
    out.write_bytes(data[:cut])
    with pytest.raises(PyctrError):
        svc.import_archive(NS, out, base_name="acc/bad", unpack=False)
    assert_empty(svc)


def test_unknown_entries_are_skipped(svc: Any, tmp_path: Path) -> None:
    lay, _ = _simple(tmp_path)
    lay.index.append({"mediaType": "application/vnd.example.thing", "digest": sha256(b"x"), "size": 1,
                      "annotations": {"org.opencontainers.image.ref.name": "thing"}})
    made = svc.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/u", unpack=False)
    assert [i.name for i in made] == ["acc/u:1"]
    # only unknown entries: an error, and nothing left
    lay2 = Layout(tmp_path / "lay2")
    lay2.index.append({"mediaType": "application/vnd.example.thing", "digest": sha256(b"x"), "size": 1})
    with pytest.raises(InvalidArgument):
        svc.import_archive("ns2", lay2.tar(tmp_path / "b.tar"), unpack=False)
    assert_empty(svc, "ns2")


def test_failure_keeps_content_that_was_there(svc: Any, tmp_path: Path) -> None:
    lay, man = _simple(tmp_path)
    svc.import_archive(NS, lay.tar(tmp_path / "good.tar"), base_name="acc/good", unpack=False)
    before = {i.digest for i in svc.content.walk(NS)}
    lay2 = Layout(tmp_path / "lay2")
    shutil.copytree(lay.path / "blobs", lay2.path / "blobs", dirs_exist_ok=True)
    man2 = lay2.image([{"new": b"n" * 3000}])
    doc = json.loads(lay2.blob(man2["digest"]).read_bytes())
    doc["layers"].append(_manifest(lay, man)["layers"][0])  # shares a blob already in the namespace
    doc["layers"].append({"mediaType": OCI_LAYER, "digest": sha256(b"absent"), "size": 6})
    lay2.add(lay2.put(json.dumps(doc).encode(), OCI_MANIFEST), "2")
    with pytest.raises(NotFound):
        svc.import_archive(NS, lay2.tar(tmp_path / "bad.tar"), base_name="acc/bad", unpack=False)
    assert {i.digest for i in svc.content.walk(NS)} == before
    assert [i.name for i in svc.list(NS)] == ["acc/good:1"]
    assert svc.md.leases.list(NS) == []


def test_not_an_archive(svc: Any, tmp_path: Path) -> None:
    p = tmp_path / "x.tar"
    p.write_bytes(b"hello" * 100)
    with pytest.raises(DataLoss):
        svc.import_archive(NS, p, unpack=False)
    empty = tmp_path / "e.tar"
    with tarfile.open(empty, "w") as t:
        ti = tarfile.TarInfo("README")
        t.addfile(ti, io.BytesIO(b""))
    with pytest.raises(InvalidArgument):
        svc.import_archive(NS, empty, unpack=False)
    with pytest.raises(NotFound):
        svc.import_archive(NS, tmp_path / "nope.tar", unpack=False)
    assert_empty(svc)


# -- containerd reads what pyctr exports ------------------------------------------------------------


@contextlib.contextmanager
def private_containerd(base: Path) -> Iterator[list[str]]:
    """containerd on a private socket under ``base`` (as the acceptance checks start it)."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd is not installed")
    d = base / "ctd"
    d.mkdir()
    (d / "config.toml").write_text(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/ctd.sock"
[ttrpc]
  address = "{d}/ctd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
""")
    log = open(d / "log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
    ctr = ["ctr", "-a", str(d / "ctd.sock"), "-n", "test"]
    try:
        for _ in range(100):
            if subprocess.run([*ctr, "version"], capture_output=True).returncode == 0:
                break
            if proc.poll() is not None:
                pytest.fail(f"containerd exited: {(d / 'log').read_text()[-500:]}")
            time.sleep(0.1)
        else:
            pytest.fail("containerd did not start")
        yield ctr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(d))]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)


@pytest.mark.integration
def test_containerd_imports_pyctr_export(svc: Any, busybox: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    svc.import_archive(NS, tar_dir(busybox, tmp_path / "in.tar"), base_name="example.com/acc/bb",
                       unpack=False)
    img = svc.get(NS, "example.com/acc/bb:latest")
    out = tmp_path / "out.tar"
    svc.export_archive(NS, out, ["example.com/acc/bb:latest"])
    with private_containerd(tmp_path) as ctr:
        p = subprocess.run([*ctr, "images", "import", str(out)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        ls = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True, check=True).stdout
        assert "example.com/acc/bb:latest" in ls
        assert img.target.digest in ls
        chk = subprocess.run([*ctr, "images", "check"], capture_output=True, text=True, check=True).stdout
        assert "complete" in chk


def test_concurrent_imports_of_one_archive(tmp_root: Roots, tmp_path: Path) -> None:
    from conftest import child_env, pyctr_executable

    lay = Layout(tmp_path / "lay")
    lay.add(lay.image([{f"f{i}": os.urandom(1 << 20) for i in range(8)}, {"g": b"g"}]), "1")
    tarball = lay.tar(tmp_path / "c.tar")
    cmd = [pyctr_executable(), *tmp_root.args(), "images", "import", "--no-unpack", "--base-name", "acc/c",
           str(tarball)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    with Client(root=str(tmp_root.root), state=str(tmp_root.state), config=str(tmp_root.config)) as c:
        s = c.plugin("images")
        assert [i.name for i in s.list(NS)] == ["acc/c:1"]
        assert s.check(NS, "acc/c:1")["status"] == "complete"
        assert s.md.leases.list(NS) == []
        assert s.content.list_statuses(NS) == []


def test_failed_import_leaves_no_bytes(tmp_root: Roots, tmp_path: Path) -> None:
    lay, man = _simple(tmp_path)
    broken_bad_digest(lay, man)  # found while writing, after the manifest and config are in
    tarball = lay.tar(tmp_path / "bad.tar")
    args = {"root": str(tmp_root.root), "state": str(tmp_root.state), "config": str(tmp_root.config)}
    with Client(**args) as c:
        with pytest.raises(DataLoss):
            c.plugin("images").import_archive(NS, tarball, base_name="acc/bad", unpack=False)
        assert len(list(c.plugin("content").walk())) >= 2  # verified blobs reached the backend...
    with Client(**args) as c:
        assert list(c.plugin("content").walk()) == []  # ...and the collector removed them at close
        assert_empty(c.plugin("images"))


def test_legacy_docker_save_layout(svc: Any, tmp_path: Path) -> None:
    """``docker save`` before 25: ``<id>/layer.tar`` (one symlinked to another), a gzip layer,
    ``<hex>.json`` config, ``repositories``; two tags on one image and an untagged one."""
    import gzip

    from images_helpers import tar_layer

    d = tmp_path / "ds"
    (d / "l1").mkdir(parents=True)
    (d / "l2").mkdir()
    (d / "l3").mkdir()
    raw1, raw2 = tar_layer({"a": b"a"}), tar_layer({"b": b"b" * 100})
    (d / "l1" / "layer.tar").write_bytes(raw1)
    (d / "l2" / "layer.tar").write_bytes(gzip.compress(raw2, mtime=0))
    os.symlink("../l1/layer.tar", d / "l3" / "layer.tar")  # docker links duplicated layers
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": [sha256(raw1), sha256(raw2), sha256(raw1)]}})
    (d / "c0ffee.json").write_text(cfg)
    cfg2 = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": [sha256(raw1)]}})
    (d / "beef.json").write_text(cfg2)
    (d / "manifest.json").write_text(json.dumps([
        {"Config": "c0ffee.json", "RepoTags": ["busybox:latest", "example.com/x/y:2"],
         "Layers": ["l1/layer.tar", "l2/layer.tar", "l3/layer.tar"]},
        {"Config": "beef.json", "RepoTags": None, "Layers": ["l3/layer.tar"]},
    ]))
    (d / "repositories").write_text("{}")
    made = svc.import_archive(NS, tar_dir(d, tmp_path / "ds.tar"), base_name="acc/ds", unpack=False)
    names = sorted(i.name for i in made)
    assert names[:2] == ["acc/ds@" + made[2].target.digest, "docker.io/library/busybox:latest"]
    assert names[2] == "example.com/x/y:2"
    ins = svc.inspect(NS, "busybox")
    types = [x["mediaType"] for x in ins["layers"]]
    assert types == ["application/vnd.docker.image.rootfs.diff.tar",
                     "application/vnd.docker.image.rootfs.diff.tar.gzip",
                     "application/vnd.docker.image.rootfs.diff.tar"]
    assert ins["layers"][1]["digest"] == sha256((d / "l2" / "layer.tar").read_bytes())
    assert ins["check"]["status"] == "complete"
    # a docker tar whose uncompressed layer does not match the config's diff id is refused, leaving nothing
    (d / "c0ffee.json").write_text(cfg.replace(sha256(raw2), sha256(b"other")).replace(
        sha256(raw1), sha256(b"wrong"), 1))
    with pytest.raises(DataLoss):
        svc.import_archive("ns3", tar_dir(d, tmp_path / "bad.tar"), unpack=False)
    assert_empty(svc, "ns3")


def test_configured_size_limit(tmp_root: Roots, tmp_path: Path) -> None:
    tmp_root.config.write_text('[plugins."pyctr.images.metadata"]\nmax_blob_size = 4096\n')
    lay, _ = _simple(tmp_path)  # its first layer is over 4 KiB
    with Client(root=str(tmp_root.root), state=str(tmp_root.state), config=str(tmp_root.config)) as c:
        s = c.plugin("images")
        assert s.max_blob_size == 4096
        with pytest.raises(InvalidArgument, match="limit of 4096"):
            s.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/l", unpack=False)
        assert_empty(s)


def test_prune_keeps_images_containers_use(svc: Any, tmp_path: Path) -> None:
    from pyctr.metadata.containers import Container, ContainerStore, RuntimeInfo

    lay = Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"a"}]), "used")
    lay.add(lay.image([{"b": b"b"}]), "idle")
    svc.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/p", unpack=False)
    ContainerStore(svc.md.db).create(NS, Container(id="c1", image="acc/p:used", runtime=RuntimeInfo("runc")))
    assert svc.prune(NS) == []  # nothing dangling
    assert svc.prune(NS, all=True, sync=True) == ["acc/p:idle"]
    assert [i.name for i in svc.list(NS)] == ["acc/p:used"]
