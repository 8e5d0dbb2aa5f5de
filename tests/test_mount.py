"""pyctr.mount: mount(2) and the new mount API through ctypes, against the real kernel."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyctr import mount as M
from pyctr.errdefs import InvalidArgument, NotFound, PyctrError
from pyctr.snapshots import Mount

pytestmark = pytest.mark.integration


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    try:
        yield tmp_path
    finally:
        M.unmount_all_under(str(tmp_path))


def _layers(work: Path, n: int) -> list[str]:
    """``n`` lower directories laid out as a snapshotter does (``snapshots/<id>/fs``), top first."""
    out = []
    for i in range(n):
        d = work / "snapshots" / str(i + 1) / "fs"
        d.mkdir(parents=True)
        (d / f"f{i}").write_text(str(i))
        out.append(str(d))
    (work / "snapshots" / str(n - 1) / "fs" / "shadow").write_text("top")
    (work / "snapshots" / "1" / "fs" / "shadow").write_text("bottom")
    return list(reversed(out))


def _overlay(work: Path, lowers: list[str], upper: bool = True) -> Mount:
    opts = ["index=off"]
    if upper:
        (work / "upper").mkdir()
        (work / "wk").mkdir()
        opts += [f"workdir={work}/wk", f"upperdir={work}/upper"]
    opts.append("lowerdir=" + ":".join(lowers))
    return Mount("overlay", "overlay", opts)


def _check_deep(target: Path, n: int) -> None:
    names = set(os.listdir(target))
    assert {f"f{i}" for i in range(n)} <= names, n - len(names)
    assert (target / "shadow").read_text() == "top"


@pytest.mark.parametrize("how", ["mount_all", "newapi", "relative"])
def test_deep_overlay_chain_mounts(work: Path, how: str) -> None:
    """250 layers: the options are far over a page; every way of mounting them works."""
    n = 250
    lowers = _layers(work, n)
    m = _overlay(work, lowers)
    assert len(",".join(m.options)) > 2 * os.sysconf("SC_PAGE_SIZE")
    target = work / "mnt"
    target.mkdir()
    if how == "mount_all":
        M.mount_all([m], str(target))
    else:
        flags, data = M.parse_options(m.options)
        fn = M._mount_overlay_newapi if how == "newapi" else M._mount_overlay_relative
        fn("overlay", str(target), flags, data)
    try:
        assert M.is_mountpoint(str(target))
        _check_deep(target, n)
        (target / "new").write_text("written")
        assert (work / "upper" / "new").read_text() == "written"
    finally:
        M.unmount(str(target))
    assert not M.is_mountpoint(str(target))
    assert os.getcwd() != str(work / "snapshots")  # the helper thread's chdir did not leak


def test_deep_overlay_chain_shell_command(work: Path) -> None:
    """mount_command's relative form mounts 300 lower directories with plain mount(8)."""
    n = 300
    m = _overlay(work, _layers(work, n), upper=False)
    target = work / "mnt"
    target.mkdir()
    cmd = M.mount_command([m], str(target))
    assert cmd.startswith(f"(cd {work}/snapshots && mount -t overlay -o "), cmd[:200]
    assert len(cmd) < os.sysconf("SC_PAGE_SIZE")
    subprocess.run(["sh", "-c", cmd], check=True)
    try:
        _check_deep(target, n)
        with pytest.raises(OSError) as e:
            (target / "x").write_text("x")
        assert e.value.errno == errno.EROFS
    finally:
        M.unmount(str(target))


def test_short_overlay_command_is_absolute(work: Path) -> None:
    m = _overlay(work, _layers(work, 3))
    cmd = M.mount_command([m], str(work / "t"))
    assert cmd == (f"mount -t overlay -o index=off,workdir={work}/wk,upperdir={work}/upper,lowerdir="
                   f"{work}/snapshots/3/fs:{work}/snapshots/2/fs:{work}/snapshots/1/fs overlay {work}/t")


def test_bind_read_only(work: Path) -> None:
    src = work / "src"
    src.mkdir()
    (src / "f").write_text("x")
    target = work / "t"
    target.mkdir()
    M.mount_all([Mount("bind", str(src), ["ro", "rbind"])], str(target))
    try:
        assert (target / "f").read_text() == "x"
        with pytest.raises(OSError) as e:
            (target / "g").write_text("y")
        assert e.value.errno == errno.EROFS
    finally:
        M.unmount(str(target))
    cmd = M.mount_command([Mount("bind", str(src), ["ro", "rbind"])], str(target))
    assert cmd == f"mount -o ro,rbind {src} {target}"
    subprocess.run(["sh", "-c", cmd], check=True)
    try:
        with pytest.raises(OSError) as e:
            (target / "g").write_text("y")
        assert e.value.errno == errno.EROFS
    finally:
        M.unmount(str(target))


def test_bind_read_write_and_nested_targets(work: Path) -> None:
    a, b = work / "a", work / "b"
    a.mkdir()
    b.mkdir()
    (a / "sub").mkdir()
    (b / "inner").write_text("b")
    target = work / "t"
    target.mkdir()
    M.mount_all([Mount("bind", str(a), ["rw", "rbind"]), Mount("bind", str(b), ["ro", "bind"], target="sub")],
                str(target))
    try:
        (target / "w").write_text("ok")
        assert (a / "w").read_text() == "ok"
        assert (target / "sub" / "inner").read_text() == "b"
    finally:
        assert sorted(M.unmount_all_under(str(target))) == [str(target), str(target / "sub")]
    assert not M.is_mountpoint(str(target))


def test_errors_carry_the_kernels_reason(work: Path) -> None:
    target = work / "t"
    target.mkdir()
    with pytest.raises(NotFound, match="lower directory /nonexistent/a: No such file or directory"):
        M.mount_all([Mount("overlay", "overlay", ["lowerdir=/nonexistent/a:/nonexistent/b"])], str(target))
    with pytest.raises(InvalidArgument, match="Unknown parameter 'bogus'"):
        M.mount_all([Mount("overlay", "overlay", [f"lowerdir={work}:{target}", "bogus=1"])], str(target))
    with pytest.raises(NotFound, match="No such file"):
        M.mount_all([Mount("bind", str(work / "missing"), ["rbind"])], str(target))
    assert not M.is_mountpoint(str(target))


def test_failed_mount_all_undoes_earlier_mounts(work: Path) -> None:
    src = work / "src"
    src.mkdir()
    (src / "sub").mkdir()
    target = work / "t"
    target.mkdir()
    with pytest.raises(PyctrError):
        M.mount_all([Mount("bind", str(src), ["rbind"]), Mount("bind", str(work / "missing"), ["rbind"],
                                                               target="sub")], str(target))
    assert not M.is_mountpoint(str(target))


def test_unmount_is_idempotent_and_handles_stacks(work: Path) -> None:
    src = work / "src"
    src.mkdir()
    target = work / "t"
    target.mkdir()
    M.unmount(str(target))  # not mounted: fine
    for _ in range(3):
        M.mount_all([Mount("bind", str(src), ["bind"])], str(target))
    M.unmount(str(target), all_layers=True)
    assert not M.is_mountpoint(str(target))


def test_mountinfo_escapes(work: Path) -> None:
    odd = work / "with space\tand tab"
    odd.mkdir()
    M.mount_all([Mount("bind", str(work), ["bind"])], str(odd))
    assert M.is_mountpoint(str(odd))
    assert M.unmount_all_under(str(odd)) == [str(odd)]


def test_parse_options() -> None:
    flags, data = M.parse_options(["ro", "nosuid", "rbind", "rprivate", "index=off", "rw", "lowerdir=/a"])
    assert flags & M.MS_RDONLY == 0  # rw after ro clears it
    assert flags & (M.MS_NOSUID | M.MS_BIND | M.MS_REC | M.MS_PRIVATE) == (
        M.MS_NOSUID | M.MS_BIND | M.MS_REC | M.MS_PRIVATE)
    assert data == ["index=off", "lowerdir=/a"]


def test_compact_lowerdirs() -> None:
    common, opts = M.compact_lowerdirs(["index=off", "lowerdir=/r/snapshots/10/fs:/r/snapshots/9/fs", "x"])
    assert common == "/r/snapshots"
    assert opts == ["index=off", "lowerdir=10/fs:9/fs", "x"]
    assert M.compact_lowerdirs(["lowerdir=/a:/b"]) == ("", ["lowerdir=/a:/b"])
