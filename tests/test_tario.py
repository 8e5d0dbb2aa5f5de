"""Layer extraction (pyctr._speedups.tario): every tar feature and whiteout rule, on both extractors."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from _tario_util import E, describe, make_tar
from pyctr._speedups import tario
from pyctr.errdefs import DataLoss, InvalidArgument, NotFound

# Ownership, device nodes and trusted.* xattrs need root (the project's tests run as root).
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ownership, devices, xattrs")


Apply = Callable[..., tario.ApplyResult]


@pytest.fixture
def apply(speedups: Any, monkeypatch: pytest.MonkeyPatch) -> Apply:
    mod = speedups.load("tario")
    monkeypatch.setattr(tario, "_impl", lambda: mod)

    def run(layer: bytes, root: Path, **kw: Any) -> tario.ApplyResult:
        return tario.apply_layer(io.BytesIO(layer), root, **kw)

    return run


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_selector_loads_extension_when_built() -> None:
    want = "py" if os.environ.get("PYCTR_NO_EXTENSIONS") else "c"
    if want == "c" and not os.environ.get("PYCTR_REQUIRE_EXTENSIONS"):
        try:
            import pyctr._speedups._tario_c  # noqa: F401
        except ImportError:
            pytest.skip("extension not built")
    assert tario.implementation() == want


# -- file types and metadata ------------------------------------------------------------------------


def test_regular_files_modes_owners_times(apply: Apply, root: Path) -> None:
    layer = make_tar([
        E("bin/", "dir", mode=0o755, mtime=1_500_000_000),
        E("bin/su", data=b"\x7fELF", mode=0o4755, uid=0, gid=0),
        E("bin/wall", data=b"w", mode=0o2755, uid=0, gid=5),
        E("tmp/", "dir", mode=0o1777),
        E("home/u/f", data=b"hi", mode=0o600, uid=1000, gid=1000,
          pax={"mtime": "1600000000.123456789", "atime": "1600000005.5"}),
        E("big", data=os.urandom(300_000), mode=0o640),
        E("empty", data=b""),
        E("contig", "cont", data=b"contiguous"),
    ])
    r = apply(layer, root)
    assert r.entries == 8
    assert r.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert r.size == len(layer)
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "bin/wall").stat().st_mode) == 0o2755
    assert (root / "bin/wall").stat().st_gid == 5
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    st = (root / "home/u/f").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert st.st_atime_ns == 1_600_000_005_500_000_000
    assert (root / "bin").stat().st_mtime == 1_500_000_000  # set after its children were created
    assert (root / "home").stat().st_mode & 0o777 == 0o755  # implicit parent
    assert (root / "contig").read_bytes() == b"contiguous" and (root / "contig").is_file()
    assert (root / "empty").stat().st_size == 0


def test_symlinks_hardlinks_devices_fifos(apply: Apply, root: Path) -> None:
    layer = make_tar([
        E("etc/target", data=b"T", uid=7, gid=8),
        E("etc/rel", "sym", link="target", uid=3, gid=4, mtime=1_234_567_890),
        E("etc/abs", "sym", link="/etc/target"),
        E("etc/dangling", "sym", link="../nowhere"),
        E("etc/hard", "hard", link="etc/target"),
        E("dev/null", "chr", dev=(1, 3), mode=0o666),
        E("dev/loop0", "blk", dev=(7, 0), mode=0o660, gid=6),
        E("run/fifo", "fifo", mode=0o620),
    ])
    apply(layer, root)
    assert os.readlink(root / "etc/rel") == "target"
    assert os.readlink(root / "etc/abs") == "/etc/target"
    assert os.readlink(root / "etc/dangling") == "../nowhere"
    lst = os.lstat(root / "etc/rel")
    assert (lst.st_uid, lst.st_gid, lst.st_mtime) == (3, 4, 1_234_567_890)
    assert (root / "etc/hard").stat().st_ino == (root / "etc/target").stat().st_ino
    assert (root / "etc/target").stat().st_nlink == 2
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0) and loop.st_gid == 6
    fifo = os.lstat(root / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620


def test_xattrs_including_capabilities(apply: Apply, root: Path) -> None:
    # security.capability v2: CAP_NET_BIND_SERVICE permitted+effective
    cap = bytes.fromhex("0100000200040000000000000000000000000000")
    layer = make_tar([
        E("ping", data=b"p", mode=0o755, pax={"SCHILY.xattr.security.capability": cap.decode("latin-1"),
                                               "SCHILY.xattr.user.note": "hello"}),
        E("d/", "dir", pax={"SCHILY.xattr.user.dir": "yes"}),
        E("x", data=b"", pax={"SCHILY.xattr.trusted.overlay.opaque": "y"}),
    ])
    apply(layer, root)
    assert os.getxattr(root / "ping", "user.note") == b"hello"
    assert os.getxattr(root / "ping", "security.capability") == cap
    assert os.getxattr(root / "d", "user.dir") == b"yes"
    assert "trusted.overlay.opaque" not in os.listxattr(root / "x")  # refused, as containerd does


def test_security_capability_raw_bytes(apply: Apply, root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "ping"
    f.write_bytes(b"p")
    cap = bytes.fromhex("0100000200040000000000000000000000000000")
    os.setxattr(f, "security.capability", cap)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--format=posix", "-C", str(src), "-cf",
                    str(tmp_path / "l.tar"), "ping"], check=True)
    apply((tmp_path / "l.tar").read_bytes(), root)
    assert os.getxattr(root / "ping", "security.capability") == cap


def test_long_names_pax_gnu_and_ustar_prefix(apply: Apply, root: Path) -> None:
    deep = "/".join(["d" * 60] * 5) + "/" + "f" * 120
    longlink = "/".join(["t" * 80] * 3)
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        layer = make_tar([E(deep, data=b"deep"), E("ll", "sym", link=longlink)], fmt=fmt)
        r = root / str(fmt)
        r.mkdir()
        apply(layer, r)
        assert (r / deep).read_bytes() == b"deep"
        assert os.readlink(r / "ll") == longlink
    # ustar: name split into prefix + name
    ustar_name = "p" * 90 + "/" + "q" * 90
    r = root / "ustar"
    r.mkdir()
    apply(make_tar([E(ustar_name, data=b"u")], fmt=tarfile.USTAR_FORMAT), r)
    assert (r / ustar_name).read_bytes() == b"u"


def test_non_utf8_names(apply: Apply, root: Path) -> None:
    layer = make_tar([E("caf\udce9", data=b"latin1")], fmt=tarfile.GNU_FORMAT)
    apply(layer, root)
    assert (Path(os.fsdecode(bytes(root) + b"/caf\xe9"))).read_bytes() == b"latin1"


@pytest.mark.parametrize("fmt", ["gnu", "posix-0.0", "posix-0.1", "posix-1.0"])
def test_sparse_files(apply: Apply, root: Path, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data1, data2 = os.urandom(5000), os.urandom(100)
    with open(src / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(data1)
        f.seek(8 << 20)
        f.write(data2)
        f.truncate(16 << 20)
    args = ["--format=gnu"] if fmt == "gnu" else ["--format=posix", f"--sparse-version={fmt[6:]}"]
    subprocess.run(["tar", "--sparse", *args, "-C", str(src), "-cf", str(tmp_path / "l.tar"), "sparse"],
                   check=True)
    apply((tmp_path / "l.tar").read_bytes(), root)
    out = root / "sparse"
    assert out.read_bytes() == (src / "sparse").read_bytes()
    assert out.stat().st_size == 16 << 20
    assert out.stat().st_blocks * 512 < 1 << 20  # the holes stayed holes


def test_base256_ids_and_oversized_owner(apply: Apply, root: Path) -> None:
    layer = make_tar([E("f", data=b"x", uid=3_000_000, gid=4_000_000)], fmt=tarfile.GNU_FORMAT)
    apply(layer, root)
    st = (root / "f").stat()
    assert (st.st_uid, st.st_gid) == (3_000_000, 4_000_000)
    big = make_tar([E("g", data=b"x", uid=1 << 32)], fmt=tarfile.GNU_FORMAT)
    with pytest.raises(InvalidArgument, match="uid"):
        apply(big, root)
    big = make_tar([E("g", data=b"x", pax={"gid": str((1 << 32) - 1)})])
    with pytest.raises(InvalidArgument, match="gid"):
        apply(big, root)


def test_same_owner_false_keeps_caller(apply: Apply, root: Path) -> None:
    apply(make_tar([E("f", data=b"x", uid=1234, gid=1234, mode=0o4750)]), root, same_owner=False)
    st = (root / "f").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert stat.S_IMODE(st.st_mode) == 0o4750


def test_replacing_existing_entries(apply: Apply, root: Path) -> None:
    apply(make_tar([E("a/", "dir"), E("a/old", data=b"o"), E("f", data=b"file"), E("s", "sym", link="x")]),
          root)
    apply(make_tar([
        E("a/", "dir", mode=0o700, uid=5),  # merges: keeps a/old
        E("f/", "dir"),  # a file replaced by a directory
        E("f/in", data=b"i"),
        E("s", data=b"now a file"),  # a symlink replaced by a file (not written through)
    ]), root)
    assert (root / "a/old").read_bytes() == b"o"
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o700 and (root / "a").stat().st_uid == 5
    assert (root / "f/in").read_bytes() == b"i"
    assert not (root / "s").is_symlink() and (root / "s").read_bytes() == b"now a file"
    assert not (root / "x").exists()
    apply(make_tar([E("a", data=b"dir replaced by file")]), root)
    assert (root / "a").read_bytes() == b"dir replaced by file"


def test_root_entry_skipped_and_dotslash_names(apply: Apply, root: Path) -> None:
    os.chmod(root, 0o711)
    r = apply(make_tar([E("./", "dir", mode=0o777), E("./x/./y/../z", data=b"z")]), root)
    assert r.entries == 1
    assert stat.S_IMODE(root.stat().st_mode) == 0o711
    assert (root / "x/z").read_bytes() == b"z"


def test_unsupported_type_refused(apply: Apply, root: Path) -> None:
    layer = bytearray(make_tar([E("v", data=b"")]))
    layer[156] = ord("V")  # GNU volume header
    _fix_checksum(layer)
    with pytest.raises(InvalidArgument, match="unsupported"):
        apply(bytes(layer), root)


def test_target_errors(apply: Apply, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        apply(make_tar([E("f")]), tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="not a directory"):
        apply(make_tar([E("f")]), tmp_path / "file")
    with pytest.raises(InvalidArgument, match="layer entry 'file/x'"):
        apply(make_tar([E("file/x", data=b"")]), tmp_path)
    with pytest.raises(NotFound, match="lower layer"):
        apply(make_tar([E("f")]), tmp_path, whiteouts="overlay", parents=[str(tmp_path / "nope")])


def test_hardlink_to_directory_or_missing_refused(apply: Apply, root: Path) -> None:
    with pytest.raises(InvalidArgument, match="directory"):
        apply(make_tar([E("d/", "dir"), E("l", "hard", link="d")]), root)
    with pytest.raises(InvalidArgument, match=r"missing|does not exist"):
        apply(make_tar([E("l2", "hard", link="nope")]), root)


# -- compression, digests, corrupt input ------------------------------------------------------------


def _layer() -> bytes:
    return make_tar([E("d/", "dir"), *(E(f"d/f{i}", data=os.urandom(i * 997)) for i in range(40))])


@pytest.mark.parametrize("codec", ["tar", "gzip", "gzip-multi", "zstd", "zstd-multi"])
def test_compression_detected_and_diff_id(apply: Apply, root: Path, codec: str) -> None:
    layer = _layer()
    blob = {
        "tar": lambda b: b,
        "gzip": gzip.compress,
        "gzip-multi": lambda b: gzip.compress(b[:7000]) + gzip.compress(b[7000:]),
        "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
        "zstd-multi": lambda b: (zstandard.ZstdCompressor().compress(b[:5000])
                                 + zstandard.ZstdCompressor().compress(b[5000:])),
    }[codec](layer)
    r = apply(blob, root)
    assert r.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert r.size == len(layer)
    assert (root / "d/f39").stat().st_size == 39 * 997


def test_zstd_frame_walk(apply: Apply, root: Path) -> None:
    """Skippable frames, checksums and content sizes are followed; garbage and cuts are caught."""
    layer = _layer()
    skippable = (0x184D2A5A).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    frames = (zstandard.ZstdCompressor(write_checksum=True).compress(layer[:9000])
              + skippable
              + zstandard.ZstdCompressor(write_content_size=False, level=19).compress(layer[9000:]))
    r = apply(skippable + frames, root)
    assert r.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    for i, bad in enumerate((frames + b"junk", frames[:-1], frames[: len(frames) // 2])):
        (root / str(i)).mkdir()
        with pytest.raises(DataLoss):
            apply(bad, root / str(i))


def test_media_type_mismatch_goes_by_the_bytes(apply: Apply, root: Path) -> None:
    layer = _layer()
    r = apply(layer, root, media_type="application/vnd.oci.image.layer.v1.tar+gzip")
    assert r.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()


def test_diff_id_covers_trailing_bytes(apply: Apply, root: Path) -> None:
    layer = _layer() + b"\0" * 10240
    r = apply(gzip.compress(layer), root)
    assert r.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()


@pytest.mark.parametrize("how", ["tar-mid-data", "tar-mid-header", "gzip", "zstd"])
def test_truncated_layers(apply: Apply, root: Path, how: str) -> None:
    layer = _layer()
    blob = {
        "tar-mid-data": layer[:5000],
        "tar-mid-header": layer[:512 * 3 + 100],
        "gzip": gzip.compress(layer)[:-100],
        "zstd": zstandard.ZstdCompressor().compress(layer)[:-100],
    }[how]
    with pytest.raises(DataLoss, match="truncated"):
        apply(blob, root)


def _fix_checksum(block: bytearray, at: int = 0) -> None:
    block[at + 148 : at + 156] = b" " * 8
    block[at + 148 : at + 156] = b"%06o\0 " % sum(block[at : at + 512])


def test_bad_checksum_and_garbage(apply: Apply, root: Path) -> None:
    layer = bytearray(_layer())
    layer[3] ^= 0xFF
    with pytest.raises(DataLoss, match="checksum"):
        apply(bytes(layer), root)
    with pytest.raises(DataLoss):
        apply(gzip.compress(_layer())[:20] + b"garbage" * 100, root)
    with pytest.raises(DataLoss):
        apply(b"\x1f\x8b\x08" + os.urandom(2000), root)


def test_decompression_bomb_limit(apply: Apply, root: Path) -> None:
    layer = make_tar([E("zeros", data=b"\0" * (8 << 20))])
    for blob in (gzip.compress(layer), zstandard.ZstdCompressor().compress(layer)):
        with pytest.raises(InvalidArgument, match="larger than"):
            apply(blob, root, max_uncompressed=1 << 20)
    apply(gzip.compress(layer), root, max_uncompressed=9 << 20)


def test_zstd_window_limit(apply: Apply, root: Path) -> None:
    """A zstd frame may not make the decoder allocate a window larger than tario.ZSTD_MAX_WINDOW."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=30, enable_ldm=True,
                                                            write_content_size=False)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = c.compress(make_tar([E("f", data=b"x" * 1000)])) + c.flush()
    assert zstandard.get_frame_parameters(blob).window_size > tario.ZSTD_MAX_WINDOW
    with pytest.raises(DataLoss, match="memory"):
        apply(blob, root)


# -- whiteouts --------------------------------------------------------------------------------------


def _base(apply: Apply, root: Path) -> None:
    apply(make_tar([
        E("a/", "dir"), E("a/x", data=b"x"), E("a/y", data=b"y"),
        E("d/", "dir"), E("d/old", data=b"old"), E("d/sub/", "dir"), E("d/sub/deep", data=b"deep"),
        E("o/", "dir"), E("o/o1", data=b"o1"), E("o/keep/", "dir"), E("o/keep/k", data=b"k"),
    ]), root)


def test_native_whiteouts(apply: Apply, root: Path) -> None:
    _base(apply, root)
    apply(make_tar([
        E("a/.wh.x"),
        E("a/.wh.nothing"),
        E(".wh.d"), E("d/", "dir"), E("d/new", data=b"new"),  # whiteout then recreate
        E("o/keep/", "dir"), E("o/keep/n", data=b"n"), E("o/.wh..wh..opq"), E("o/o2", data=b"o2"),
        E("nothere/.wh.x"),  # no parent: nothing to delete, nothing created
        E("a/.wh..wh.plnk"),  # aufs metadata: ignored
    ]), root)
    assert not (root / "a/x").exists() and (root / "a/y").exists()
    assert sorted(os.listdir(root / "d")) == ["new"]
    assert sorted(os.listdir(root / "o")) == ["keep", "o2"]
    assert sorted(os.listdir(root / "o/keep")) == ["n"]  # opaque reaches into kept directories
    assert not (root / "nothere").exists()


def test_native_whiteout_after_own_entries_keeps_them(apply: Apply, root: Path) -> None:
    _base(apply, root)
    apply(make_tar([E("d/", "dir"), E("d/new", data=b"n"), E(".wh.d"), E("a/z", data=b"z"), E("a/.wh.z")]),
          root)
    assert sorted(os.listdir(root / "d")) == ["new"]  # the lower d is gone, this layer's d stays
    assert (root / "a/z").exists()


def test_invalid_whiteout_names(apply: Apply, root: Path) -> None:
    for bad in (".wh..", ".wh."):
        with pytest.raises(InvalidArgument, match="whiteout"):
            apply(make_tar([E("a/" + bad)]), root)


def test_overlay_whiteouts_written_as_devices_and_xattrs(apply: Apply, tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    _base(apply, lower)
    os.chmod(lower / "o", 0o750)
    os.chown(lower / "o", 12, 34)
    os.setxattr(lower / "o", "user.copied", b"up")
    os.setxattr(lower / "o", "trusted.overlay.opaque", b"y")
    apply(make_tar([E("a/.wh.x"), E("o/.wh..wh..opq"), E("o/o2", data=b"o2"),
                    E(".wh.d"), E("d/", "dir"), E("d/new", data=b"n")]),
          upper, whiteouts="overlay", parents=[str(lower)])
    wh = os.lstat(upper / "a/x")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0 and (wh.st_uid, wh.st_gid) == (0, 0)
    assert os.getxattr(upper / "o", "trusted.overlay.opaque") == b"y"
    o = os.stat(upper / "o")  # implicit parent copied from the lower layer
    assert (stat.S_IMODE(o.st_mode), o.st_uid, o.st_gid) == (0o750, 12, 34)
    assert os.getxattr(upper / "o", "user.copied") == b"up"
    assert os.getxattr(upper / "d", "trusted.overlay.opaque") == b"y"  # recreated: hides lower d


# -- overlay and native give the same merged tree ---------------------------------------------------

SEQUENCES: dict[str, list[E]] = {
    "delete-file": [E("a/.wh.x")],
    "whiteout-then-recreate": [E(".wh.d"), E("d/", "dir"), E("d/new", data=b"new")],
    "recreate-then-whiteout": [E("d/", "dir"), E("d/new", data=b"new"), E(".wh.d")],
    "opaque-first": [E("o/.wh..wh..opq"), E("o/o2", data=b"o2")],
    "opaque-last": [E("o/o2", data=b"o2"), E("o/keep/", "dir"), E("o/.wh..wh..opq")],
    "opaque-implicit-child": [E("o/keep/n", data=b"n"), E("o/.wh..wh..opq")],
    "delete-subdir": [E("d/.wh.sub"), E("d/.wh.old")],
    "dir-to-file": [E("d", data=b"now a file")],
    "file-to-dir": [E("a/x/", "dir"), E("a/x/in", data=b"in")],
    "file-to-whiteout-to-dir": [E("a/.wh.x"), E("a/x/", "dir")],
    "whiteout-missing": [E("zz/.wh.nope"), E(".wh.nope")],
    "symlink-over-dir": [E("d", "sym", link="a")],
    "new-tree": [E("n/m/o/p", data=b"p"), E("n/m/.wh.q")],
    "whiteout-inside-then-dir": [E("d/.wh.old"), E(".wh.d")],
    "empty-dir-then-whiteout": [E("d/", "dir"), E(".wh.d"), E("e/", "dir"), E(".wh.e")],
    "opaque-missing": [E("q/.wh..wh..opq")],
    "hardlink-in-layer": [E("a/n", data=b"n"), E("d/h", "hard", link="a/n")],
}


@pytest.mark.integration
@pytest.mark.parametrize("seq", sorted(SEQUENCES))
def test_overlay_and_native_merge_alike(apply: Apply, tmp_path: Path, seq: str) -> None:
    native = tmp_path / "native"
    lower, upper, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for p in (native, lower, upper, work, mnt):
        p.mkdir()
    _base(apply, native)
    _base(apply, lower)
    layer = make_tar(SEQUENCES[seq])
    apply(layer, native)
    apply(layer, upper, whiteouts="overlay", parents=[str(lower)])
    with _overlay(lower, upper, work, mnt):
        merged = describe(mnt, dir_times=False)
    assert merged == describe(native, dir_times=False)


class _overlay:
    def __init__(self, lower: Path, upper: Path, work: Path, mnt: Path) -> None:
        self.args = ["mount", "-t", "overlay", "overlay", "-o",
                     f"lowerdir={lower},upperdir={upper},workdir={work}", str(mnt)]
        self.mnt = mnt

    def __enter__(self) -> None:
        subprocess.run(self.args, check=True, capture_output=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], check=True)


def test_reapply_round_trip_of_gnu_tar(apply: Apply, root: Path, tmp_path: Path) -> None:
    """A tree with every file type, archived by GNU tar, comes back identical."""
    src = tmp_path / "src"
    for p in ("a/b/c", "e"):
        (src / p).mkdir(parents=True)
    (src / "a/b/c/f").write_bytes(os.urandom(70_000))
    (src / "a/x").write_text("x")
    os.link(src / "a/x", src / "e/hard")
    os.symlink("../a/x", src / "e/sym")
    os.mkfifo(src / "e/fifo")
    os.mknod(src / "e/zero", 0o640 | stat.S_IFCHR, os.makedev(1, 5))
    os.chown(src / "a/x", 42, 43)
    os.chmod(src / "a/x", 0o6711)
    os.setxattr(src / "a/b/c/f", "user.k", b"v")
    os.utime(src / "a/b", (1_000_000_000, 1_000_000_000))
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--format=posix", "-C", str(src), "-czf",
                    str(tmp_path / "l.tgz"), "."], check=True)
    apply((tmp_path / "l.tgz").read_bytes(), root)
    assert describe(root, dir_times=True) == describe(src, dir_times=True)


@pytest.fixture
def many_files_layer(tmp_path: Path) -> Iterator[bytes]:
    yield make_tar([E(f"d{i % 17}/f{i}", data=b"z" * (i % 300)) for i in range(3000)])


def test_many_files_and_cache_eviction(apply: Apply, root: Path, many_files_layer: bytes) -> None:
    r = apply(many_files_layer, root)
    assert r.entries == 3000
    assert sum(len(files) for _, _, files in os.walk(root)) == 3000
