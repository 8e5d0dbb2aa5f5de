"""File-tree helpers the snapshotters share: disk usage, and a faithful tree copy.

:func:`copy_tree` copies everything a container image layer can hold: regular files (with
``copy_file_range``, so reflink-capable filesystems share blocks), directories, symlinks, hard links
(kept as links within the copy), character and block devices, FIFOs and sockets; with owners, modes
(setuid/setgid/sticky included), extended attributes (``security.capability`` too) and times.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

from pyctr.snapshots import Usage


def disk_usage(path: str) -> Usage:
    """Bytes (allocated blocks) and inodes used under ``path``, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [path]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Usage()
    seen.add((st.st_dev, st.st_ino))
    size += st.st_blocks * 512
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                k = (st.st_dev, st.st_ino)
                if k not in seen:
                    seen.add(k)
                    size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return Usage(size=size, inodes=len(seen))


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
                raise


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    """Owner, mode, xattrs, then times (in that order: chown clears setuid bits and capabilities)."""
    link = stat.S_ISLNK(st.st_mode)
    with contextlib.suppress(PermissionError):
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file(src: str, dst: str, st: os.stat_result) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            left = st.st_size
            fast = True
            while left > 0:
                if fast:
                    try:
                        n = os.copy_file_range(fin, fout, min(left, 1 << 30))
                    except OSError as e:
                        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                            raise
                        fast = False
                        continue
                else:
                    buf = os.read(fin, min(left, 1 << 20))
                    n = os.write(fout, buf) if buf else 0
                if n == 0:
                    break
                left -= n
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def copy_tree(src: str, dst: str) -> None:
    """Copy the tree at ``src`` to ``dst`` (a directory that exists and is empty, or does not exist)."""
    links: dict[tuple[int, int], str] = {}
    top = os.lstat(src)
    if not os.path.isdir(dst):
        os.mkdir(dst, 0o700)
    _copy_dir(src, dst, links)
    _copy_meta(src, dst, top)


def _copy_dir(src: str, dst: str, links: dict[tuple[int, int], str]) -> None:
    with os.scandir(src) as it:
        entries = list(it)
    for e in entries:
        s, d = e.path, os.path.join(dst, e.name)
        st = e.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d, 0o700)
            _copy_dir(s, d, links)
            _copy_meta(s, d, st)
            continue
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = links.get(key)
            if first is not None:
                os.link(first, d, follow_symlinks=False)
                continue
            links[key] = d
        if stat.S_ISREG(mode):
            _copy_file(s, d, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.mknod(d, mode, st.st_rdev)
        else:  # pragma: no cover - no other file types exist on Linux
            continue
        _copy_meta(s, d, st)


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything under it; a missing path is fine."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        # Read-only directories owned by someone else, immutable bits...: make them writable and retry.
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(root, d), 0o700)
        shutil.rmtree(path, ignore_errors=True)
