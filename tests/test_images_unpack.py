"""Unpacking images into real snapshotters (overlayfs and native) through the real diff plugin: whiteouts,
shared layers, chain IDs, GC labels, wrong diff ids, concurrent unpacks, hostile layers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Roots, child_env, pyctr_executable
from images_helpers import OCI_CONFIG, OCI_MANIFEST, Layout, sha256, tar_dir, tar_layer, whiteout_layout
from pyctr import Client
from pyctr.errdefs import DataLoss, PyctrError
from pyctr.images import chain_ids
from pyctr.mount import mount_all, unmount

pytestmark = pytest.mark.integration

NS = "default"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("unpacking into snapshotters needs root")


@pytest.fixture
def client(tmp_root: Roots) -> Iterator[Client]:
    _need_root()
    c = Client(root=str(tmp_root.root), state=str(tmp_root.state), config=str(tmp_root.config))
    try:
        yield c
    finally:
        c.close()
        from pyctr.mount import unmount_all_under

        unmount_all_under(str(tmp_root.root))
        unmount_all_under(str(tmp_root.state))


@pytest.fixture
def svc(client: Client) -> Any:
    s = client.plugin("images")
    try:
        client.plugin("diff")
    except PyctrError as e:
        pytest.skip(f"no diff plugin: {e}")
    return s


def snapshots(svc: Any, sn: str, ns: str = NS) -> list[Any]:
    return list(svc.md.snapshotter(sn).walk(ns))


def read_tree(svc: Any, sn: str, top: str, where: Path, key: str = "view") -> dict[str, str]:
    """Mount a view of ``top`` and return {relative path: content or '<dir>'}."""
    s = svc.md.snapshotter(sn)
    mounts = s.view(NS, f"{key}-{sn}", top)
    where.mkdir(parents=True, exist_ok=True)
    mount_all(mounts, str(where))
    try:
        out: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(where):
            for d in dirnames:
                out[os.path.relpath(os.path.join(dirpath, d), where)] = "<dir>"
            for f in filenames:
                p = os.path.join(dirpath, f)
                out[os.path.relpath(p, where)] = (
                    "<link>" if os.path.islink(p) else Path(p).read_text(errors="replace"))
        return out
    finally:
        unmount(str(where))
        s.remove(NS, f"{key}-{sn}")


@pytest.fixture(scope="session")
def whiteout_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    d = tmp_path_factory.mktemp("wh")
    return tar_dir(whiteout_layout(d), d / "wh.tar")


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_whiteouts_umoci_three_layers(svc: Any, whiteout_tar: Path, tmp_path: Path, sn: str) -> None:
    made = svc.import_archive(NS, whiteout_tar, base_name="acc/wh", snapshotter=sn)
    assert [i.name for i in made] == ["acc/wh:t"]
    ins = svc.inspect(NS, "acc/wh:t")
    chain = chain_ids(ins["config"]["rootfs"]["diff_ids"])
    assert len(chain) == 3
    snaps = {s.name: s for s in snapshots(svc, sn)}
    assert set(snaps) == set(chain)  # one committed snapshot per layer, named by chain ID
    assert all(s.kind.value == "Committed" for s in snaps.values())
    assert snaps[chain[2]].parent == chain[1] and snaps[chain[1]].parent == chain[0]
    assert snaps[chain[0]].labels["containerd.io/snapshot.ref"] == chain[0]
    # GC labels: config -> top chain; layers -> uncompressed digest
    cfg = svc.content.info(NS, ins["config_descriptor"]["digest"])
    assert cfg.labels[f"containerd.io/gc.ref.snapshot.{sn}"] == chain[2]
    for layer, diff in zip(ins["layers"], ins["config"]["rootfs"]["diff_ids"], strict=True):
        assert svc.content.info(NS, layer["digest"]).labels["containerd.io/uncompressed"] == diff
    assert svc.md.leases.list(NS) == []
    tree = read_tree(svc, sn, chain[2], tmp_path / "mnt")
    assert "a/x" not in tree
    assert tree["a/y"] == "y\n"
    assert "d/old" not in tree  # from a whited-out directory
    assert tree["d/new"] == "new\n"
    assert "o/o1" not in tree
    assert tree["o/o2"] == "o2\n"
    assert svc.unpacked(NS, svc.get(NS, "acc/wh:t"), sn)
    # unpacking again reuses everything
    assert svc.unpack(NS, "acc/wh:t", snapshotter=sn) == chain[2]
    assert {s.name for s in snapshots(svc, sn)} == set(chain)


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_opaque_directory_and_gzip_layers(svc: Any, tmp_path: Path, sn: str) -> None:
    lay = Layout(tmp_path / "lay")
    base = {"o/": None, "o/o1": b"o1", "o/sub/": None, "o/sub/s": b"s", "keep": b"k"}
    opaque = {"o/": None, "o/.wh..wh..opq": b"", "o/o2": b"o2", ".wh.keep": b""}
    lay.add(lay.image([base, opaque], gzip_layers=True), "1")
    svc.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/o", snapshotter=sn)
    top = svc.top_chain_id(NS, svc.get(NS, "acc/o:1").target)
    tree = read_tree(svc, sn, top, tmp_path / "mnt")
    assert tree == {"o": "<dir>", "o/o2": "o2"}


def test_shared_base_is_unpacked_once(svc: Any, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "lay")
    base = {"etc/": None, "etc/base": b"base\n"}
    m1 = lay.image([base, {"one": b"1"}])
    m2 = lay.image([base, {"two": b"2"}])
    lay.add(m1, "one")
    lay.add(m2, "two")
    svc.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/s", snapshotter="native")
    names = [s.name for s in snapshots(svc, "native")]
    assert len(names) == 3  # base once, plus one top each
    d1 = chain_ids([sha256(tar_layer(base)), sha256(tar_layer({"one": b"1"}))])
    assert d1[0] in names and d1[1] in names
    # the second namespace links the committed layers instead of applying them again
    svc.import_archive("other", lay.tar(tmp_path / "b.tar"), base_name="acc/s", unpack=False)
    top = svc.unpack("other", "acc/s:one", snapshotter="native")
    assert top == d1[1]
    backend = svc.md.snapshotter("native").backend
    assert len([i for i in backend.walk() if i.kind.value == "Committed"]) == 3


def _bad_diff_id_layout(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path / "lay")
    good = lay.image([{"a": b"a"}, {"b": b"b"}])
    doc = json.loads(lay.blob(good["digest"]).read_bytes())
    cfg = json.loads(lay.blob(doc["config"]["digest"]).read_bytes())
    cfg["rootfs"]["diff_ids"][1] = sha256(b"something else")
    doc["config"] = lay.put(json.dumps(cfg).encode(), OCI_CONFIG)
    lay.add(lay.put(json.dumps(doc).encode(), OCI_MANIFEST), "1")
    return lay


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_wrong_diff_id_fails_and_leaves_nothing(svc: Any, tmp_path: Path, sn: str) -> None:
    lay = _bad_diff_id_layout(tmp_path)
    with pytest.raises(DataLoss, match="wrong diff id"):
        svc.import_archive(NS, lay.tar(tmp_path / "bad.tar"), base_name="acc/bad", snapshotter=sn)
    assert svc.list(NS) == []
    assert [s for s in snapshots(svc, sn) if s.kind.value == "Active"] == []
    assert snapshots(svc, sn) == []  # the first layer's commit was rolled back too
    assert svc.content.walk(NS) == []
    assert svc.md.leases.list(NS) == []
    # the same through a standalone unpack: the image stays, the active snapshot does not
    svc.import_archive(NS, lay.tar(tmp_path / "bad2.tar"), base_name="acc/bad", unpack=False)
    with pytest.raises(DataLoss):
        svc.unpack(NS, "acc/bad:1", snapshotter=sn)
    assert [s for s in snapshots(svc, sn) if s.kind.value == "Active"] == []
    assert svc.md.leases.list(NS) == []


def test_hostile_layer_is_contained(svc: Any, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "f").write_text("keep\n")
    lay = Layout(tmp_path / "lay")
    hostile = {"esc": ("symlink", str(canary)), "esc/f": b"pwned\n",
               "../../../../../../.." + str(canary) + "/new": b"pwned\n"}
    lay.add(lay.image([hostile]), "1")
    try:  # refused, or applied with every name kept inside the snapshot (as containerd does)
        svc.import_archive(NS, lay.tar(tmp_path / "h.tar"), base_name="acc/h", snapshotter="native")
    except PyctrError:
        assert svc.list(NS) == []
        assert snapshots(svc, "native") == []
    assert (canary / "f").read_text() == "keep\n"
    assert not (canary / "new").exists()


def test_concurrent_unpacks_make_one_chain(tmp_root: Roots, tmp_path: Path) -> None:
    _need_root()
    lay = Layout(tmp_path / "lay")
    layers = [{f"l{i}/": None, f"l{i}/f": os.urandom(200_000)} for i in range(4)]
    lay.add(lay.image(layers), "1")
    tarball = lay.tar(tmp_path / "c.tar")
    exe = pyctr_executable()
    base = [exe, *tmp_root.args()]
    p = subprocess.run([*base, "images", "import", "--no-unpack", "--base-name", "acc/c", str(tarball)],
                       capture_output=True, text=True, env=child_env())
    assert p.returncode == 0, p.stderr
    procs = [subprocess.Popen([*base, "images", "unpack", "--snapshotter", "native", "acc/c:1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
             for _ in range(3)]
    outs = [pr.communicate(timeout=120) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), outs
    tops = {o[0].strip() for o in outs}
    assert len(tops) == 1
    with Client(root=str(tmp_root.root), state=str(tmp_root.state), config=str(tmp_root.config)) as c:
        sn = c.plugin("metadata").snapshotter("native")
        infos = list(sn.walk(NS))
        assert len(infos) == 4 and all(i.kind.value == "Committed" for i in infos)
        backend = [i for i in sn.backend.walk() if i.kind.value == "Committed"]
        assert len(backend) == 4
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        mounts = sn.view(NS, "v", tops.pop())
        mount_all(mounts, str(mnt))
        try:
            for i, files in enumerate(layers):
                assert (mnt / f"l{i}" / "f").read_bytes() == files[f"l{i}/f"]
        finally:
            unmount(str(mnt))


def test_remove_then_gc_collects_snapshots(svc: Any, client: Client, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "lay")
    lay.add(lay.image([{"a": b"a"}, {"b": b"b"}]), "1")
    svc.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/g", snapshotter="native")
    assert len(snapshots(svc, "native")) == 2
    try:
        gc = client.plugin("gc")
    except PyctrError:
        pytest.skip("no gc plugin")
    gc.schedule_and_wait(30)
    assert len(snapshots(svc, "native")) == 2  # kept alive through the config's gc.ref.snapshot label
    svc.delete(NS, "acc/g:1", sync=True)
    assert snapshots(svc, "native") == []
    assert svc.content.walk(NS) == []


# -- unpack during fetch ----------------------------------------------------------------------------


class _Ev:
    def __init__(self, digest: str, kind: str, state: str = "done") -> None:
        self.digest, self.kind, self.state = digest, kind, state


def _put(svc: Any, desc: dict[str, Any], data: bytes, labels: dict[str, str] | None = None) -> None:
    from pyctr.errdefs import AlreadyExists

    try:
        w = svc.content.writer(NS, f"test-{desc['digest']}", desc["size"], desc["digest"])
    except AlreadyExists:
        return
    w.write(data)
    w.commit(desc["size"], desc["digest"], labels=labels or {})


def _feed(svc: Any, lay: Layout, man: dict[str, Any], session: Any, gate: Any = None) -> None:
    """What a pull does: manifest first (with its GC labels), then the config, then each layer, with a
    progress event after each commit; ``gate(i)`` runs before layer ``i`` is written."""
    from pyctr import images as imgs
    from pyctr.content import Descriptor

    mdata = lay.blob(man["digest"]).read_bytes()
    doc = json.loads(mdata)
    mdesc = Descriptor.from_oci(man)
    kids = imgs.children(mdesc, mdata)
    _put(svc, man, mdata, imgs.child_gc_labels(mdesc, kids))
    _put(svc, doc["config"], lay.blob(doc["config"]["digest"]).read_bytes())
    session.on_event(_Ev(doc["config"]["digest"], "config"))
    for i, layer in enumerate(doc["layers"]):
        if gate is not None:
            gate(i)
        _put(svc, layer, lay.blob(layer["digest"]).read_bytes())
        session.on_event(_Ev(layer["digest"], "layer"))


def test_unpack_session_applies_layers_while_fetching(svc: Any, tmp_path: Path) -> None:
    import time

    from pyctr.content import Descriptor

    lay = Layout(tmp_path / "lay")
    layers = [{f"l{i}": os.urandom(50_000)} for i in range(3)]
    man = lay.image(layers)
    chain = chain_ids([sha256(tar_layer(x)) for x in layers])
    sn = svc.md.snapshotter("native")
    seen_early: list[bool] = []

    def gate(i: int) -> None:
        if i == 2:  # before the last layer arrives, the first two must already be unpacked
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if {s.name for s in sn.walk(NS)} >= {chain[0], chain[1]}:
                    seen_early.append(True)
                    return
                time.sleep(0.02)
            seen_early.append(False)

    with svc.temporary_lease(NS, "pull") as lease, svc.unpack_session(NS, "native", lease=lease) as session:
        _feed(svc, lay, man, session, gate)
        top = session.finish(Descriptor.from_oci(man))
    assert seen_early == [True]
    assert top == chain[2]
    assert {s.name for s in sn.walk(NS)} == set(chain)


def test_unpack_session_failure_cleans_up(svc: Any, tmp_path: Path) -> None:
    from pyctr.content import Descriptor

    lay = _bad_diff_id_layout(tmp_path)
    man = lay.index[0]
    with svc.temporary_lease(NS, "pull") as lease:
        session = svc.unpack_session(NS, "overlayfs", lease=lease)
        _feed(svc, lay, man, session)
        with pytest.raises(DataLoss, match="wrong diff id"):
            session.finish(Descriptor.from_oci(man))
    assert snapshots(svc, "overlayfs") == []
    # a fetch that fails midway: abort stops the session and removes what it committed
    lay2 = Layout(tmp_path / "lay2")
    man2 = lay2.image([{"a": b"a"}, {"b": b"b"}])

    def boom(i: int) -> None:
        if i == 1:
            import time

            deadline = time.monotonic() + 10
            while not snapshots(svc, "overlayfs") and time.monotonic() < deadline:
                time.sleep(0.02)
            raise ConnectionError("registry went away")

    with (svc.temporary_lease(NS, "pull") as lease, pytest.raises(ConnectionError),
          svc.unpack_session(NS, "overlayfs", lease=lease) as session):
        _feed(svc, lay2, man2, session, boom)
    assert snapshots(svc, "overlayfs") == []


def test_unpack_session_with_a_real_pull(client: Client, seeded_registry: Any) -> None:
    svc = client.plugin("images")
    try:
        dist = client.plugin("distribution")
        client.plugin("diff")
    except PyctrError as e:
        pytest.skip(f"needs the distribution and diff plugins: {e}")
    from pyctr.images import Image

    ref = f"{seeded_registry.server.addr}/test/big:1"
    with svc.temporary_lease(NS, "pull") as lease:
        with svc.unpack_session(NS, "overlayfs", lease=lease) as session:
            res = dist.fetch(NS, ref, plain_http=True, progress=session.progress(), lease_id=lease)
            top = session.finish(res.target)
        svc.create_or_update(NS, Image(name=res.name, target=res.target))
    assert top == svc.inspect(NS, ref)["chain_ids"][-1]
    assert svc.unpacked(NS, svc.get(NS, ref), "overlayfs")
    assert session.result is not None and session.result.manifest  # the session did the work


def test_rollback_spares_layers_another_unpack_reused(svc: Any, tmp_path: Path) -> None:
    from pyctr.content import Descriptor
    from pyctr.plugins.images.metadata.unpack import Unpacker

    lay = Layout(tmp_path / "lay")
    man = lay.image([{"a": b"a"}, {"b": b"b"}])
    lay.add(man, "1")
    svc.import_archive(NS, lay.tar(tmp_path / "a.tar"), base_name="acc/r", unpack=False)
    target = Descriptor.from_oci(man)
    with svc.temporary_lease(NS, "a") as la, svc.temporary_lease(NS, "b") as lb:
        first = Unpacker(svc, NS, "native", la)
        res = first.unpack(target)
        assert len(res.created) == 2
        second = Unpacker(svc, NS, "native", lb)
        assert second.unpack(target).created == []  # reused, held by its own lease
        first.rollback()  # the first operation failed later on
        assert {s.name for s in snapshots(svc, "native")} == set(res.chain)
    lone = Unpacker(svc, NS, "overlayfs", None)
    lone.unpack(target)
    lone.rollback()
    assert snapshots(svc, "overlayfs") == []
