"""The walking differ: apply layers onto snapshot mounts, and compute layers from two mounts.

Apply (containerd's ``core/diff/apply``): a single overlay mount is written straight into its
``upperdir`` with overlay whiteouts and the lowerdirs as parents (no mount at all); a single bind mount
into its source with real deletions; anything else is mounted on a temporary directory, applied, and
unmounted (in ``finally``).  Extraction is :func:`pyctr._speedups.tario.apply_layer`.

Compare (containerd's ``plugins/diff/walking``): when ``upper`` is a single overlay whose lower layers
are exactly ``lower``, its ``upperdir`` is read directly (whiteout devices become ``.wh.<name>``,
``trusted.overlay.opaque=y`` becomes ``.wh..wh..opq``).  Otherwise both sides are mounted read-only
and walked together (continuity's ``fs.Changes`` rules: metadata, xattrs, size and mtime decide, the
content only when both mtimes lack nanoseconds); deletions become whiteouts, parent directories of
changes are included, hard links are kept by inode.  The tar is PAX with exact nanosecond mtimes and
``SCHILY.xattr.*`` records (``security.capability`` included, ``trusted.overlay.*`` left out),
compressed with gzip (isal), zstd or not at all, into a temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from pyctr.content import Descriptor
from pyctr.diff import MEDIA_TYPE_LAYER_GZIP, Applied, Compared, MountLike
from pyctr.errdefs import FailedPrecondition, InvalidArgument
from pyctr.snapshots import Mount

log = logging.getLogger("pyctr.plugin.pyctr.diff.walking")

OPAQUE_XATTR = "trusted.overlay.opaque"
WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
COPY_CHUNK = 1 << 20


def _mounts(mounts: Sequence[MountLike]) -> list[Mount]:
    return [m if isinstance(m, Mount) else Mount.from_dict(m) for m in mounts]


def _opt(m: Mount, key: str) -> str | None:
    for o in m.options:
        if o.startswith(key + "="):
            return o[len(key) + 1 :]
    return None


def _lowerdirs(m: Mount) -> list[str]:
    from pyctr.mount import _split_lowerdirs  # overlay's escaping rules live there

    value = _opt(m, "lowerdir")
    return _split_lowerdirs(value) if value else []


def _compression(media_type: str) -> str:
    mt = media_type.lower()
    if mt.endswith(("+gzip", ".gzip")):
        return "gzip"
    if mt.endswith(("+zstd", ".zstd")):
        return "zstd"
    if mt.endswith("tar"):
        return "tar"
    raise InvalidArgument(
        f"cannot write a layer of media type {media_type!r} (want tar, tar+gzip or tar+zstd)"
    )


class WalkingDiffer:
    """The ``pyctr.diff.walking`` plugin's instance.

    :param tmpdir: where temporary mount points and compared layers go.
    :param max_uncompressed: default limit on a layer's uncompressed size (None: no limit).
    :param gzip_level: isal compression level for gzip layers (0-3).
    """

    def __init__(self, tmpdir: str, *, max_uncompressed: int | None = None, gzip_level: int = 1) -> None:
        self.tmpdir = tmpdir
        self.max_uncompressed = max_uncompressed
        self.gzip_level = gzip_level

    # -- apply ------------------------------------------------------------------------------------
    def apply(self, media_type: str, blob: BinaryIO, mounts: Sequence[MountLike], *,
              max_uncompressed: int | None = None) -> Applied:
        from pyctr._speedups.tario import apply_layer

        ms = _mounts(mounts)
        limit = max_uncompressed if max_uncompressed is not None else self.max_uncompressed
        upper = _opt(ms[0], "upperdir") if len(ms) == 1 and ms[0].type == "overlay" else None
        if upper and not ms[0].target:
            r = apply_layer(blob, upper, media_type=media_type, whiteouts="overlay",
                            parents=_lowerdirs(ms[0]), max_uncompressed=limit)
        elif len(ms) == 1 and ms[0].type in ("bind", "rbind") and not ms[0].target:
            if ms[0].readonly:
                raise InvalidArgument(f"cannot apply a layer onto the read-only mount of {ms[0].source}")
            r = apply_layer(blob, ms[0].source, media_type=media_type, whiteouts="native",
                            max_uncompressed=limit)
        else:
            if any(m.readonly for m in ms):
                raise InvalidArgument("cannot apply a layer onto read-only mounts")
            with self._mounted(ms, readonly=False) as target:
                r = apply_layer(blob, target, media_type=media_type, whiteouts="native",
                                max_uncompressed=limit)
        return Applied(r.diff_id, r.size, r.entries)

    @contextlib.contextmanager
    def _mounted(self, ms: Sequence[Mount], *, readonly: bool) -> Iterator[str]:
        from pyctr.mount import mount_all, unmount

        os.makedirs(self.tmpdir, exist_ok=True, mode=0o700)
        target = tempfile.mkdtemp(prefix="mount-", dir=self.tmpdir)
        try:
            if ms:
                mount_all(_readonly(ms) if readonly else ms, target)
            try:
                yield target
            finally:
                if ms:
                    unmount(target, lazy=True, all_layers=True)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(target)

    # -- compare ----------------------------------------------------------------------------------
    def compare(self, lower: Sequence[MountLike], upper: Sequence[MountLike], *,
                media_type: str = MEDIA_TYPE_LAYER_GZIP) -> Compared:
        lo, up = _mounts(lower), _mounts(upper)
        if not up:
            raise InvalidArgument("compare needs the upper mounts")
        upperdir = overlay_upperdir(lo, up)
        os.makedirs(self.tmpdir, exist_ok=True, mode=0o700)
        fd, path = tempfile.mkstemp(prefix="layer-", dir=self.tmpdir)
        try:
            with os.fdopen(fd, "wb") as out:
                if upperdir is not None:
                    res = write_layer(out, media_type, overlay_changes(upperdir), self.gzip_level)
                else:
                    with self._mounted(lo, readonly=True) as lroot, self._mounted(up, readonly=True) as uroot:
                        res = write_layer(out, media_type, tree_changes(lroot, uroot), self.gzip_level)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(path)
            raise
        digest, size, diff_id, entries = res
        return Compared(path, Descriptor(media_type, digest, size), diff_id, entries)


def _readonly(ms: Sequence[Mount]) -> list[Mount]:
    """The mounts made read-only; an overlay loses its upper and work dirs (the upper dir becomes the
    top lower dir), so it can be mounted while a container uses the same dirs."""
    out = []
    for m in ms:
        if m.type == "overlay":
            upper = _opt(m, "upperdir")
            lowers = _lowerdirs(m)
            opts = [o for o in m.options if not o.startswith(("upperdir=", "workdir=", "lowerdir="))]
            dirs = ([upper] if upper else []) + lowers
            if len(dirs) == 1:  # overlay needs two lower dirs without an upper one: bind it instead
                out.append(Mount("bind", dirs[0], ["ro", "rbind"], m.target))
                continue
            esc = ":".join(d.replace("\\", "\\\\").replace(":", "\\:") for d in dirs)
            out.append(Mount("overlay", m.source, [*opts, f"lowerdir={esc}"], m.target))
        else:
            out.append(Mount(m.type, m.source, [o for o in m.options if o != "rw"] + ["ro"], m.target))
    return out


def overlay_upperdir(lower: Sequence[Mount], upper: Sequence[Mount]) -> str | None:
    """The upper dir to read directly, if ``upper`` is one overlay stacked exactly on ``lower``
    (containerd's ``overlay.GetUpperdir``); else None."""
    if len(upper) != 1 or upper[0].type != "overlay" or upper[0].target:
        return None
    upperdir = _opt(upper[0], "upperdir")
    if not upperdir:
        return None
    ulowers = _lowerdirs(upper[0])
    if not lower:
        return None
    if len(lower) != 1:
        return None
    lm = lower[0]
    if lm.type in ("bind", "rbind"):
        return upperdir if ulowers == [lm.source] else None
    if lm.type == "overlay" and not _opt(lm, "upperdir"):
        return upperdir if ulowers == _lowerdirs(lm) else None
    return None


# -- changes --------------------------------------------------------------------------------------

# A change: (relative path, host path of the upper entry or None for a deletion, opaque marker?)
Change = tuple[str, str | None, bool]


def _list(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def overlay_changes(upperdir: str) -> Iterator[Change]:
    """Changes recorded in an overlay upper dir: every entry is new or changed, except whiteout
    devices (deletions) and opaque directories (a marker after the directory)."""

    def walk(rel: str) -> Iterator[Change]:
        base = os.path.join(upperdir, rel) if rel else upperdir
        for name in _list(base):
            r = f"{rel}/{name}" if rel else name
            p = os.path.join(base, name)
            st = os.lstat(p)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                yield r, None, False
                continue
            yield r, p, False
            if stat.S_ISDIR(st.st_mode):
                if _getxattr(p, OPAQUE_XATTR) == b"y":
                    yield f"{r}/{WH_OPAQUE}", None, True
                yield from walk(r)

    return walk("")


def _getxattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _xattrs(path: str) -> dict[str, bytes]:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    for k in names:
        if k.startswith("trusted.overlay."):
            continue
        v = _getxattr(path, k)
        if v is not None:
            out[k] = v
    return out


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb", opener=_nofollow) as fa, open(b, "rb", opener=_nofollow) as fb:
        while True:
            x, y = fa.read(COPY_CHUNK), fb.read(COPY_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def same_entry(lp: str, ls: os.stat_result, up: str, us: os.stat_result) -> bool:
    """continuity's ``sameFile``: type, mode, owner, device, xattrs; for non-directories also size
    and mtime, and the content when neither mtime has nanoseconds."""
    if (ls.st_dev, ls.st_ino) == (us.st_dev, us.st_ino):
        return True
    if (ls.st_mode, ls.st_uid, ls.st_gid, ls.st_rdev) != (us.st_mode, us.st_uid, us.st_gid, us.st_rdev):
        return False
    if _xattrs(lp) != _xattrs(up):
        return False
    if stat.S_ISDIR(us.st_mode):
        return True
    if ls.st_size != us.st_size:
        return False
    lt, ut = ls.st_mtime_ns, us.st_mtime_ns
    if lt // 10**9 != ut // 10**9:
        return False
    if lt % 10**9 == 0 and ut % 10**9 == 0:
        if stat.S_ISLNK(us.st_mode):
            return os.readlink(lp) == os.readlink(up)
        if us.st_size == 0 or not stat.S_ISREG(us.st_mode):
            return True
        return _same_content(lp, up)
    return lt == ut


def tree_changes(lower: str, upper: str) -> Iterator[Change]:
    """The changes of the tree ``upper`` over the tree ``lower``, walked together.  A directory
    holding changes is written before them even if it did not change itself (its times did)."""
    pending: list[Change] = []  # unchanged ancestors of the current directory, not yet written

    def out(change: Change) -> Iterator[Change]:
        yield from pending
        pending.clear()
        yield change

    def walk(rel: str) -> Iterator[Change]:
        ubase = os.path.join(upper, rel) if rel else upper
        lbase = os.path.join(lower, rel) if rel else lower
        unames = _list(ubase)
        lnames = set(_list(lbase))
        for name in sorted(lnames.difference(unames)):
            yield from out(((f"{rel}/{name}" if rel else name), None, False))
        for name in unames:
            r = f"{rel}/{name}" if rel else name
            up, lp = os.path.join(ubase, name), os.path.join(lbase, name)
            us = os.lstat(up)
            ls = os.lstat(lp) if name in lnames else None
            changed = ls is None or not same_entry(lp, ls, up, us)
            if changed:
                yield from out((r, up, False))
            if stat.S_ISDIR(us.st_mode):
                if ls is not None and stat.S_ISDIR(ls.st_mode):
                    if not changed:
                        pending.append((r, up, False))
                    yield from walk(r)
                    if pending and pending[-1][0] == r:
                        pending.pop()
                else:  # everything below is new
                    yield from _all_below(up, r)

    return walk("")


def _all_below(base: str, rel: str) -> Iterator[Change]:
    """Every entry below the host directory ``base`` (shown at ``rel``), as additions."""
    for name in _list(base):
        r, p = f"{rel}/{name}", os.path.join(base, name)
        yield r, p, False
        if stat.S_ISDIR(os.lstat(p).st_mode):
            yield from _all_below(p, r)


# -- writing --------------------------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """What tarfile writes to: hashes the tar stream, compresses it, hashes and writes the result."""

    def __init__(self, out: BinaryIO, compression: str, gzip_level: int) -> None:
        self.out = out
        self.raw = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.size = 0
        self._compress: Callable[[bytes], bytes] | None = None
        self._flush: Callable[[], bytes] | None = None
        if compression == "gzip":
            from isal import isal_zlib

            c = isal_zlib.compressobj(gzip_level, isal_zlib.DEFLATED, 31)
            self._compress, self._flush = c.compress, c.flush
        elif compression == "zstd":
            import zstandard

            z = zstandard.ZstdCompressor(level=3).compressobj()
            self._compress, self._flush = z.compress, z.flush

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.raw.update(data)
        self._out(self._compress(data) if self._compress else data)
        return len(data)

    def _out(self, data: bytes) -> None:
        if data:
            self.blob.update(data)
            self.size += len(data)
            self.out.write(data)

    def finish(self) -> None:
        if self._flush is not None:
            self._out(self._flush())


def write_layer(out: BinaryIO, media_type: str, changes: Iterator[Change],
                gzip_level: int = 1) -> tuple[str, int, str, int]:
    """Write ``changes`` as a layer of ``media_type`` to ``out``; returns
    ``(blob digest, blob size, diff_id, entries)``."""
    sink = _Sink(out, _compression(media_type), gzip_level)
    links: dict[tuple[int, int], str] = {}
    entries = 0
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for rel, path, opaque in changes:
            if path is None:
                head, _, name = rel.rpartition("/")
                wh = rel if opaque else (f"{head}/" if head else "") + WH_PREFIX + name
                ti = tarfile.TarInfo(wh)
                ti.mode, ti.mtime = 0o644, 0
                tar.addfile(ti)
            else:
                _add(tar, rel, path, links)
            entries += 1
    sink.finish()
    return "sha256:" + sink.blob.hexdigest(), sink.size, "sha256:" + sink.raw.hexdigest(), entries


def _add(tar: tarfile.TarFile, rel: str, path: str, links: dict[tuple[int, int], str]) -> None:
    st = os.lstat(path)
    m = st.st_mode
    ti = tarfile.TarInfo(rel)
    ti.mode = stat.S_IMODE(m)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = st.st_mtime_ns // 10**9
    pax: dict[str, str] = {}
    if st.st_mtime_ns % 10**9:
        pax["mtime"] = f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d}"
    for k, v in _xattrs(path).items():
        pax["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
    ti.pax_headers = pax
    data: BinaryIO | None = None
    if stat.S_ISREG(m):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
        else:
            if st.st_nlink > 1:
                links[key] = rel
            ti.type, ti.size = tarfile.REGTYPE, st.st_size
            data = open(path, "rb", opener=_nofollow)  # noqa: SIM115 - closed below
    elif stat.S_ISDIR(m):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(m):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(m):
        ti.type = tarfile.FIFOTYPE
    else:
        log.info("skipping %s: sockets and other special files do not go into layers", rel)
        return
    try:
        tar.addfile(ti, data)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FailedPrecondition(
                f"{rel} changed while the layer was written; stop the writer and retry"
            ) from e
        raise
    finally:
        if data is not None:
            data.close()


__all__ = [
    "WalkingDiffer",
    "overlay_changes",
    "overlay_upperdir",
    "same_entry",
    "tree_changes",
    "write_layer",
]
