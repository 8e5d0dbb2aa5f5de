"""The walking differ: compare two trees into a layer, apply it back, and apply onto snapshot mounts."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from _tario_util import E, describe, make_tar
from pyctr._speedups import tario
from pyctr.diff import MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD, Applied, Compared
from pyctr.errdefs import DataLoss, InvalidArgument
from pyctr.plugins.diff.walking.differ import (
    WalkingDiffer,
    overlay_upperdir,
    tree_changes,
    write_layer,
)
from pyctr.snapshots import Mount

# Ownership, device nodes and trusted.* xattrs need root (the project's tests run as root).
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ownership, devices, xattrs")



def _lower_tree(root: Path) -> None:
    for d in ("etc", "usr/bin", "var/lib/gone", "var/keep", "swap/dir", "opq"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + os.urandom(5000))
    (root / "var/lib/gone/file").write_text("bye")
    (root / "var/keep/k").write_text("k")
    (root / "swap/file").write_text("becomes a dir")
    (root / "swap/dir/x").write_text("dir becomes a file")
    (root / "opq/a").write_text("a")
    (root / "samemtime").write_text("aaaa")
    os.utime(root / "samemtime", (1_000_000_000, 1_000_000_000))
    os.symlink("passwd", root / "etc/pw")


def _change(root: Path) -> None:
    (root / "etc/hosts").write_text("127.0.0.1 localhost changed\n")
    os.chmod(root / "etc/passwd", 0o600)
    os.chown(root / "usr/bin/tool", 0, 50)
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.setxattr(root / "usr/bin/tool", "security.capability",
                bytes.fromhex("0100000200040000000000000000000000000000"))
    shutil.rmtree(root / "var/lib/gone")
    (root / "var/keep/new").write_text("new")
    (root / "swap/file").unlink()
    (root / "swap/file").mkdir()
    (root / "swap/file/inner").write_text("inner")
    shutil.rmtree(root / "swap/dir")
    (root / "swap/dir").write_text("now a file")
    (root / "opq/a").unlink()
    (root / "opq/b").write_text("b")
    (root / "samemtime").write_text("bbbb")  # same size, same whole-second mtime: content decides
    os.utime(root / "samemtime", (1_000_000_000, 1_000_000_000))
    os.unlink(root / "etc/pw")
    os.symlink("hosts", root / "etc/pw")
    new = root / "new"
    new.mkdir()
    (new / "f").write_bytes(os.urandom(70_000))
    os.link(new / "f", new / "hard")
    os.symlink("/etc/passwd", new / "abs")
    os.mkfifo(new / "fifo")
    os.mknod(new / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(new / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 1))
    os.chown(new / "f", 1234, 5678)
    os.setxattr(new / "f", "user.note", b"\xff\x00binary")
    os.utime(new / "f", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def _copy(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def _read_layer(path: str, media_type: str) -> bytes:
    data = Path(path).read_bytes()
    if media_type.endswith("gzip"):
        return gzip.decompress(data)
    if media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    _lower_tree(a)
    _copy(a, b)
    _change(b)
    return a, b


@pytest.mark.parametrize("media_type", [MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD])
def test_round_trip_every_file_type(trees: tuple[Path, Path], tmp_path: Path, media_type: str) -> None:
    a, b = trees
    out = tmp_path / "layer"
    with open(out, "wb") as f:
        digest, size, diff_id, entries = write_layer(f, media_type, tree_changes(str(a), str(b)))
    blob = out.read_bytes()
    assert digest == "sha256:" + hashlib.sha256(blob).hexdigest() and size == len(blob)
    raw = _read_layer(str(out), media_type)
    assert diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    target = tmp_path / "target"
    _copy(a, target)
    r = tario.apply_layer(str(out), target, media_type=media_type)
    assert r.diff_id == diff_id and r.entries == entries
    assert describe(target) == describe(b)


def test_no_changes_gives_an_empty_layer(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = trees
    copy = tmp_path / "copy"
    _copy(a, copy)
    with open(tmp_path / "l", "wb") as f:
        *_, entries = write_layer(f, MEDIA_TYPE_LAYER_TAR, tree_changes(str(a), str(copy)))
    assert entries == 0


def test_unsupported_media_type(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = trees
    with open(tmp_path / "l", "wb") as f, pytest.raises(InvalidArgument, match="media type"):
        write_layer(f, "application/json", tree_changes(str(a), str(b)))


def test_overlay_upperdir_fast_path_conditions() -> None:
    up = [Mount("overlay", "overlay", ["workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"])]
    assert overlay_upperdir([Mount("overlay", "overlay", ["lowerdir=/l1:/l2"])], up) == "/u"
    assert overlay_upperdir([Mount("bind", "/l1", ["ro", "rbind"])], up) is None
    one = [Mount("overlay", "overlay", ["workdir=/w", "upperdir=/u", "lowerdir=/l1"])]
    assert overlay_upperdir([Mount("bind", "/l1", ["ro", "rbind"])], one) == "/u"
    assert overlay_upperdir([Mount("bind", "/other", ["ro", "rbind"])], one) is None
    assert overlay_upperdir([], [Mount("bind", "/x", ["rw"])]) is None


def test_result_types_round_trip_as_dicts() -> None:
    a = Applied("sha256:" + "0" * 64, 10, 3)
    assert Applied.from_dict(a.to_dict()) == a and a.digest == a.diff_id
    from pyctr.content import Descriptor

    desc = Descriptor(MEDIA_TYPE_LAYER_GZIP, "sha256:" + "1" * 64, 5)
    c = Compared("/tmp/x", desc, "sha256:" + "2" * 64, 4)
    assert Compared.from_dict(c.to_dict()) == c
    assert c.labels == {"containerd.io/uncompressed": c.diff_id}


# -- with mounts ------------------------------------------------------------------------------------


@pytest.fixture
def differ(tmp_path: Path) -> Iterator[WalkingDiffer]:
    d = WalkingDiffer(str(tmp_path / "differ-tmp"))
    yield d
    leftover = [m for m in _mounts() if m.startswith(str(tmp_path))]
    for m in reversed(leftover):
        subprocess.run(["umount", "-l", m], check=False)
    assert not leftover, f"mounts left behind: {leftover}"


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


@pytest.mark.integration
def test_compare_bind_mounts_and_apply_round_trip(differ: WalkingDiffer, trees: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    a, b = trees
    c = differ.compare([Mount("bind", str(a), ["ro", "rbind"])], [Mount("bind", str(b), ["rw", "rbind"])])
    try:
        assert c.descriptor.media_type == MEDIA_TYPE_LAYER_GZIP
        assert c.descriptor.digest == "sha256:" + hashlib.sha256(Path(c.path).read_bytes()).hexdigest()
        target = tmp_path / "target"
        _copy(a, target)
        with open(c.path, "rb") as blob:
            r = differ.apply(c.descriptor.media_type, blob, [Mount("bind", str(target), ["rw", "rbind"])])
        assert r.diff_id == c.diff_id
        assert describe(target) == describe(b)
    finally:
        os.unlink(c.path)


@pytest.mark.integration
def test_compare_from_nothing(differ: WalkingDiffer, trees: tuple[Path, Path], tmp_path: Path) -> None:
    _, b = trees
    c = differ.compare([], [Mount("bind", str(b), ["ro", "rbind"])], media_type=MEDIA_TYPE_LAYER_TAR)
    target = tmp_path / "t"
    target.mkdir()
    tario.apply_layer(c.path, target)
    os.unlink(c.path)
    assert describe(target) == describe(b)


@pytest.mark.integration
def test_overlay_upperdir_compare_and_apply(differ: WalkingDiffer, trees: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    """A container's changes on overlayfs: the upperdir is read directly; applying the layer onto the
    lower tree (native) gives the merged view, and applying it on overlay again gives it too."""
    a, _ = trees
    upper, work, mnt = tmp_path / "upper", tmp_path / "work", tmp_path / "mnt"
    for p in (upper, work, mnt):
        p.mkdir()
    ov = Mount("overlay", "overlay", [f"workdir={work}", f"upperdir={upper}", f"lowerdir={a}"])
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(ov.options), str(mnt)], check=True)
    try:
        _change(mnt)
        shutil.rmtree(mnt / "opq")  # deleted and recreated: an opaque directory in the upperdir
        (mnt / "opq").mkdir()
        (mnt / "opq/fresh").write_text("fresh")
        merged = describe(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    lower = [Mount("bind", str(a), ["ro", "rbind"])]
    assert overlay_upperdir(lower, [ov]) == str(upper)
    c = differ.compare(lower, [ov])
    try:
        raw = gzip.decompress(Path(c.path).read_bytes())
        assert b"opq/.wh..wh..opq" in raw and b"var/lib/.wh.gone" in raw
        native = tmp_path / "native"
        _copy(a, native)
        with open(c.path, "rb") as blob:
            differ.apply(MEDIA_TYPE_LAYER_GZIP, blob, [Mount("bind", str(native), ["rw", "rbind"])])
        assert describe(native) == merged
        # and on overlayfs: a fresh upper over the same lower
        up2, work2 = tmp_path / "up2", tmp_path / "work2"
        up2.mkdir()
        work2.mkdir()
        ov2 = Mount("overlay", "overlay", [f"workdir={work2}", f"upperdir={up2}", f"lowerdir={a}"])
        with open(c.path, "rb") as blob:
            differ.apply(MEDIA_TYPE_LAYER_GZIP, blob, [ov2])
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(ov2.options), str(mnt)],
                       check=True)
        try:
            assert describe(mnt) == merged
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        os.unlink(c.path)


@pytest.mark.integration
def test_compare_two_overlays_through_readonly_mounts(differ: WalkingDiffer, trees: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """Neither side is the other's parent: both are mounted read-only (an overlay without its upper
    and work dirs) and walked."""
    a, b = trees
    empty_up, w = tmp_path / "eu", tmp_path / "ew"
    empty_up.mkdir()
    w.mkdir()
    up = Mount("overlay", "overlay", [f"workdir={w}", f"upperdir={empty_up}", f"lowerdir={b}"])
    c = differ.compare([Mount("bind", str(a), ["ro", "rbind"])], [up])
    try:
        target = tmp_path / "t"
        _copy(a, target)
        tario.apply_layer(c.path, target)
        assert describe(target) == describe(b)
    finally:
        os.unlink(c.path)


@pytest.mark.integration
def test_apply_through_a_temporary_mount(differ: WalkingDiffer, tmp_path: Path) -> None:
    """Mounts other than one overlay or one bind are mounted on a temporary directory first."""
    layer = make_tar([E("d/f", data=b"through a mount")])
    r = differ.apply(MEDIA_TYPE_LAYER_TAR, io.BytesIO(layer), [Mount("tmpfs", "tmpfs", ["size=1m"])])
    assert r.entries == 1
    assert not os.listdir(tmp_path / "differ-tmp")  # unmounted and the mount point removed


@pytest.mark.integration
def test_apply_overlay_fast_path_and_errors(differ: WalkingDiffer, tmp_path: Path) -> None:
    lower, upper, work = tmp_path / "l", tmp_path / "u", tmp_path / "w"
    for p in (lower, upper, work):
        p.mkdir()
    (lower / "gone").write_text("x")
    ov = {"type": "overlay", "source": "overlay",
          "options": [f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower}"]}
    r = differ.apply(MEDIA_TYPE_LAYER_GZIP, io.BytesIO(gzip.compress(make_tar([E(".wh.gone")]))), [ov])
    assert r.entries == 1 and stat.S_ISCHR(os.lstat(upper / "gone").st_mode)
    with pytest.raises(DataLoss):
        differ.apply(MEDIA_TYPE_LAYER_GZIP, io.BytesIO(gzip.compress(make_tar([E("x")]))[:-30]), [ov])
    with pytest.raises(InvalidArgument, match="read-only"):
        differ.apply(MEDIA_TYPE_LAYER_TAR, io.BytesIO(make_tar([E("x")])),
                     [Mount("bind", str(lower), ["ro", "rbind"])])
    with pytest.raises(InvalidArgument, match="larger than"):
        differ.apply(MEDIA_TYPE_LAYER_TAR, io.BytesIO(make_tar([E("x", data=b"0" * 100_000)])),
                     [Mount("bind", str(lower), ["rw", "rbind"])], max_uncompressed=10_000)
