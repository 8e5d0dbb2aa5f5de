"""The snapshotter conformance suite against the built-in overlayfs and native snapshotters, plus what
is specific to them (mount tables, on-disk layout, crash leftovers, several processes at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyctr.errdefs import FailedPrecondition
from pyctr.mount import unmount_all_under
from pyctr.plugins.snapshots.native import NativeSnapshotter
from pyctr.plugins.snapshots.overlayfs import OverlaySnapshotter, check_overlay_support
from pyctr.snapshots import Kind, Mount
from pyctr.testsuite.snapshots import mounted, snapshotter_suite

pytestmark = pytest.mark.integration


def _overlay(root: Path) -> OverlaySnapshotter:
    why = check_overlay_support(str(root))
    if why:
        pytest.skip(why)
    return OverlaySnapshotter(root)


TestOverlayfsSuite = snapshotter_suite(_overlay, name="overlayfs", marks=[pytest.mark.integration])
TestNativeSuite = snapshotter_suite(NativeSnapshotter, name="native", marks=[pytest.mark.integration])


@pytest.fixture
def work(tmp_path: Path):  # type: ignore[no-untyped-def]
    try:
        yield tmp_path
    finally:
        unmount_all_under(str(tmp_path))


# -- overlayfs: containerd's mount table -------------------------------------------------------------


def test_overlay_mount_table(work: Path) -> None:
    sn = OverlaySnapshotter(work / "root", index_off=True, mount_options=["volatile"])
    d = sn.snapshots_dir
    assert sn.prepare("a", "") == [Mount("bind", f"{d}/1/fs", ["rw", "rbind"])]
    assert sn.view("v0", "") == [Mount("bind", f"{d}/2/fs", ["ro", "rbind"])]
    sn.commit("A", "a")
    assert sn.prepare("b", "A") == [Mount("overlay", "overlay", [
        "index=off", f"workdir={d}/3/work", f"upperdir={d}/3/fs", f"lowerdir={d}/1/fs", "volatile"])]
    assert sn.view("v1", "A") == [Mount("bind", f"{d}/1/fs", ["ro", "rbind"])]
    sn.commit("B", "b")
    assert sn.view("v2", "B") == [Mount("overlay", "overlay", ["index=off", f"lowerdir={d}/3/fs:{d}/1/fs",
                                                               "volatile"])]
    assert sorted(os.listdir(f"{d}/3")) == ["fs", "work"]
    assert os.listdir(f"{d}/5") == ["fs"]  # a view has no work directory
    sn.close()


def test_overlay_upperdir_label(work: Path) -> None:
    sn = OverlaySnapshotter(work / "root", upperdir_label=True)
    sn.prepare("a", "")
    assert sn.stat("a").labels["containerd.io/snapshot/overlay.upperdir"] == f"{sn.snapshots_dir}/1/fs"
    sn.commit("A", "a")
    assert sn.stat("A").labels["containerd.io/snapshot/overlay.upperdir"] == f"{sn.snapshots_dir}/1/fs"


def test_overlay_skipped_with_the_kernels_reason(work: Path) -> None:
    """On a backing filesystem overlay cannot use as upper (here: another overlay), the plugin is
    skipped, and its status says why in the kernel's words."""
    from pyctr.config import Config
    from pyctr.engine import Engine
    from pyctr.registry import Status

    assert check_overlay_support(str(work / "ok")) == ""
    for sub in ("l", "u", "w", "m"):
        (work / sub).mkdir()
    from pyctr.mount import mount_all

    opts = [f"lowerdir={work}/l", f"upperdir={work}/u", f"workdir={work}/w"]
    mount_all([Mount("overlay", "overlay", opts)], str(work / "m"))
    why = check_overlay_support(str(work / "m" / "root"))
    assert "not supported as upperdir" in why, why
    engine = Engine(Config(root=str(work / "m" / "root"), state=str(work / "state")))
    try:
        st = engine.registry.status("pyctr.snapshot.overlayfs")
        assert st.status == Status.SKIPPED, (st.status, st.message)
        assert "not supported as upperdir" in st.message
        assert engine.registry.status("pyctr.snapshot.native").status == Status.OK
    finally:
        engine.close()
    assert not (work / "m" / "root" / "pyctr.snapshot.overlayfs" / "probe").exists()
    assert [p.name for p in (work / "m" / "root" / "pyctr.snapshot.overlayfs").iterdir()] == []


def test_overlay_probe_on_a_path_that_cannot_exist(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    why = check_overlay_support(str(tmp_path / "file" / "root"))
    assert why.startswith("cannot use ") and "Not a directory" in why, why


def test_native_mounts_and_copy(work: Path) -> None:
    sn = NativeSnapshotter(work / "root")
    d = sn.snapshots_dir
    assert sn.prepare("a", "") == [Mount("bind", f"{d}/1", ["rw", "rbind"])]
    Path(d, "1", "f").write_text("x")
    sn.commit("A", "a")
    assert sn.view("v", "A") == [Mount("bind", f"{d}/2", ["ro", "rbind"])]
    assert Path(d, "2", "f").read_text() == "x"  # a full copy
    assert sn.usage("A").inodes == 2


# -- removal, leftovers -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter], ids=["overlayfs", "native"])
def test_remove_deletes_directories(work: Path, cls: type) -> None:
    sn = cls(work / "root")
    sn.prepare("a", "")
    sn.commit("A", "a")
    sn.prepare("b", "A")
    with pytest.raises(FailedPrecondition, match="child"):
        sn.remove("A")
    sn.remove("b")
    sn.remove("A")
    assert os.listdir(sn.snapshots_dir) == []


@pytest.mark.parametrize("cls", [OverlaySnapshotter, NativeSnapshotter], ids=["overlayfs", "native"])
def test_async_remove_waits_for_cleanup(work: Path, cls: type) -> None:
    sn = cls(work / "root", sync_remove=False)
    sn.prepare("a", "")
    sn.remove("a")
    assert os.listdir(sn.snapshots_dir) == ["rm-1"]
    # leftovers of a prepare interrupted in a process that is gone, and one in progress here
    os.mkdir(os.path.join(sn.snapshots_dir, "new-999999999-abc"))
    os.mkdir(os.path.join(sn.snapshots_dir, f"new-{os.getpid()}-abc"))
    sn.prepare("keep", "")
    assert sorted(sn.cleanup()) == ["new-999999999-abc", "rm-1"]
    assert sorted(os.listdir(sn.snapshots_dir)) == ["2", f"new-{os.getpid()}-abc"]


def test_failed_prepare_leaves_nothing(work: Path) -> None:
    sn = NativeSnapshotter(work / "root")

    def boom(tmp: str, kind: Kind, parent_ids: tuple[int, ...]) -> None:
        Path(tmp, "partial").write_text("x")
        raise OSError(28, "No space left on device")

    sn._populate = boom  # type: ignore[method-assign]
    with pytest.raises(OSError):
        sn.prepare("a", "")
    assert os.listdir(sn.snapshots_dir) == []
    assert list(sn.walk()) == []


def test_reopen_keeps_snapshots(work: Path) -> None:
    sn = OverlaySnapshotter(work / "root")
    sn.prepare("a", "", {"containerd.io/snapshot/x": "1"})
    sn.commit("A", "a")
    sn.close()
    again = OverlaySnapshotter(work / "root")
    assert again.stat("A").labels == {}
    assert again.stat("A").kind == Kind.COMMITTED
    assert again.prepare("b", "A")[0].type == "overlay"


# -- several processes at once ----------------------------------------------------------------------


_WORKER = textwrap.dedent("""
    import sys
    from pyctr.errdefs import AlreadyExists
    from pyctr.plugins.snapshots.{mod} import {cls}
    sn = {cls}(sys.argv[1])
    won = 0
    for i in range(15):
        sn.prepare(f"p{{sys.argv[2]}}-{{i}}", "base")
        try:
            sn.prepare(f"shared-{{i}}", "base")
            won += 1
        except AlreadyExists:
            pass
    print(won)
""")


@pytest.mark.parametrize("mod,cls", [("overlayfs", "OverlaySnapshotter"), ("native", "NativeSnapshotter")],
                         ids=["overlayfs", "native"])
def test_several_processes(work: Path, mod: str, cls: str) -> None:
    root = work / "root"
    sn = OverlaySnapshotter(root) if mod == "overlayfs" else NativeSnapshotter(root)
    sn.prepare("base-a", "")
    sn.commit("base", "base-a")
    code = _WORKER.format(mod=mod, cls=cls)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert sum(int(out) for out, _ in outs) == 15  # each shared key was made exactly once
    infos = list(sn.walk())
    assert len(infos) == 1 + 4 * 15 + 15
    ids = sorted(int(x) for x in os.listdir(sn.snapshots_dir))
    assert len(ids) == len(infos)  # one directory per snapshot, no leftovers


def test_view_of_deep_chain_through_runtime_mounts(work: Path) -> None:
    """The mounts the snapshotter returns for a 200-layer chain mount as they are (mount_all)."""
    sn = OverlaySnapshotter(work / "root")
    parent = ""
    for i in range(200):
        sn.prepare(f"l{i}a", parent)
        Path(sn.snapshots_dir, str(i + 1), "fs", f"f{i}").write_text(str(i))
        sn.commit(f"l{i}", f"l{i}a")
        parent = f"l{i}"
    mounts = sn.view("v", parent)
    assert len(",".join(mounts[0].options)) > 4096
    with mounted(mounts, work) as root:
        assert len(os.listdir(root)) == 200


# -- a third-party snapshotter ----------------------------------------------------------------------


class _CopySnapshotter(NativeSnapshotter):
    """What a plugin author might ship: here, the native snapshotter under another name."""


class _AcmePlugin:
    from pyctr.hookspecs import hookimpl

    @staticmethod
    @hookimpl
    def pyctr_plugin_registrations() -> list:  # type: ignore[type-arg]
        from pyctr.registry import PluginType, Registration

        return [Registration(type=PluginType.SNAPSHOT, id="acme.snapshot.copy",
                             init=lambda ctx: _CopySnapshotter(ctx.root))]


def test_third_party_snapshotter_plugin(work: Path) -> None:
    """A snapshot plugin from outside pyctr is found by name, namespaced, and passes the suite."""
    from pyctr.config import Config
    from pyctr.engine import Engine
    from pyctr.registry import make_plugin_manager

    pm = make_plugin_manager()
    pm.register(_AcmePlugin(), name="acme")
    engine = Engine(Config(root=str(work / "root"), state=str(work / "state")), pm)
    try:
        store = engine.plugin("metadata")
        assert "copy" in store.snapshotter_names()
        sn = store.snapshotter("copy")
        sn.prepare("default", "k")
        assert sn.backend_key("default", "k") == "default/1/k"
        assert (work / "root" / "acme.snapshot.copy" / "snapshots" / "1").is_dir()
        assert [i.name for i in store.snapshotter("overlayfs").walk("default")] == []
    finally:
        engine.close()


TestThirdPartySuite = snapshotter_suite(_CopySnapshotter, name="copy", marks=[pytest.mark.integration],
                                       deep_chain=16)
