"""Helpers for the layer tests: build tar layers entry by entry, and describe a tree for comparison."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class E:
    """One tar entry: ``E("a/f", data=b"x")``, ``E("d/", type="dir")``, ``E("l", type="sym", link="t")``."""

    name: str
    type: str = "file"  # file dir sym hard chr blk fifo cont
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000
    dev: tuple[int, int] = (0, 0)
    pax: dict[str, str] = field(default_factory=dict)


_TYPES = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE, "cont": tarfile.CONTTYPE,
}


def make_tar(entries: Iterable[E], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.type]
            ti.mode = e.mode if e.mode is not None else (0o755 if e.type == "dir" else 0o644)
            ti.uid, ti.gid, ti.mtime = e.uid, e.gid, e.mtime
            ti.linkname = e.link
            ti.devmajor, ti.devminor = e.dev
            if e.pax:
                ti.pax_headers = dict(e.pax)
            if e.type in ("file", "cont"):
                ti.size = len(e.data)
                t.addfile(ti, io.BytesIO(e.data))
            else:
                t.addfile(ti)
    return buf.getvalue()


def describe(root: str | Path, *, times: bool = True, dir_times: bool = False,
             xattrs: bool = True) -> dict[str, tuple[Any, ...]]:
    """``{relative path: (kind, mode, uid, gid, content or target or rdev, mtime, xattrs)}``."""
    out: dict[str, tuple[Any, ...]] = {}
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            m = st.st_mode
            if stat.S_ISREG(m):
                kind, what = "file", Path(p).read_bytes()
            elif stat.S_ISDIR(m):
                kind, what = "dir", None
            elif stat.S_ISLNK(m):
                kind, what = "sym", os.readlink(p)
            elif stat.S_ISCHR(m):
                kind, what = "chr", st.st_rdev
            elif stat.S_ISBLK(m):
                kind, what = "blk", st.st_rdev
            else:
                kind, what = "fifo", None
            mt = st.st_mtime_ns if times and (kind != "dir" or dir_times) else None
            xa: tuple[tuple[str, bytes], ...] = ()
            if xattrs and kind != "sym":
                xa = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)))
            out[rel] = (kind, stat.S_IMODE(m) if kind != "sym" else None, st.st_uid, st.st_gid, what, mt, xa)
    return out
