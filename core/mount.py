"""Mounting what snapshotters return: ``mount(2)`` through ctypes, no subprocess.

* :func:`mount_all` mounts a list of :class:`~pyctr.snapshots.Mount` at a target, in order (bind and
  rbind with read-only remounts and propagation changes, overlay, anything the kernel knows);
* :func:`unmount` and :func:`unmount_all_under` take mounts down (retrying busy ones, lazily if asked);
* :func:`mount_command` renders the same mounts as a shell command (``pyctr snapshots mounts``).

Deep overlay chains: ``mount(2)`` takes at most one page of options.  When the options of an overlay
do not fit, :func:`mount_all` passes each lower directory on its own with the new mount API
(``fsopen``/``fsconfig("lowerdir+")``/``fsmount``/``move_mount``, Linux 6.8 and later).  On older kernels
it falls back to containerd's way: the lower directories are rewritten relative to their longest
common directory, and a helper thread with a private working directory (``unshare(CLONE_FS)``,
``chdir``) calls ``mount(2)``.  :func:`mount_command` uses the same relative form
(``(cd COMMON && mount ...)``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shlex
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errdefs import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotImplementedErr,
    PermissionDenied,
    PyctrError,
)

if TYPE_CHECKING:
    from .snapshots import Mount

# -- mount(2) flags --------------------------------------------------------------------------------
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
_PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

MNT_FORCE = 1
MNT_DETACH = 2
CLONE_FS = 0x200

# (clear, set) per option, as containerd's parseMountOptions.
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
    "private": (False, MS_PRIVATE),
    "rprivate": (False, MS_PRIVATE | MS_REC),
    "shared": (False, MS_SHARED),
    "rshared": (False, MS_SHARED | MS_REC),
    "slave": (False, MS_SLAVE),
    "rslave": (False, MS_SLAVE | MS_REC),
    "unbindable": (False, MS_UNBINDABLE),
    "runbindable": (False, MS_UNBINDABLE | MS_REC),
}

# -- the new mount API (syscall numbers are the same on every architecture since Linux 5.2) ----------
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
_FSCONFIG_MAX_STRING = 255  # fsconfig copies at most 256 bytes of a string value, NUL included

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: Options at least this long are not passed to mount(2) as they are (containerd's threshold).
LONG_OPTIONS = PAGE_SIZE - 512

_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)  # libc is already loaded; find_library would run ldconfig
        cp = ctypes.c_char_p
        lib.mount.argtypes = [cp, cp, cp, ctypes.c_ulong, cp]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        lib.unshare.argtypes = [ctypes.c_int]
        lib.unshare.restype = ctypes.c_int
        lib.syscall.restype = ctypes.c_long
        _libc = lib
    return _libc


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


# -- errors ----------------------------------------------------------------------------------------


def _error(what: str, err: int, detail: str = "") -> PyctrError:
    msg = f"{what}: {os.strerror(err)}"
    if detail:
        msg += f" ({detail})"
    cls: type[PyctrError]
    if err == errno.ENOENT:
        cls = NotFound
    elif err in (errno.EPERM, errno.EACCES):
        cls = PermissionDenied
    elif err == errno.EBUSY:
        cls = FailedPrecondition
    elif err in (errno.ENOSYS, errno.ENODEV):
        cls = NotImplementedErr
    elif err == errno.EINVAL:
        cls = InvalidArgument
    else:
        cls = Internal
    e: Any = cls(msg)
    e.errno = err
    e.detail = detail
    return e  # type: ignore[no-any-return]


# -- option parsing --------------------------------------------------------------------------------


def parse_options(options: Iterable[str]) -> tuple[int, list[str]]:
    """Split fstab-style options into ``mount(2)`` flags and the data options the filesystem gets."""
    flags = 0
    data: list[str] = []
    for o in options:
        f = _FLAGS.get(o)
        if f is None:
            data.append(o)
            continue
        clear, bits = f
        if clear:
            flags &= ~bits
        else:
            flags |= bits
    return flags, data


def _sys_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    lib = _lib()
    if lib.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        if fstype == "overlay":
            what = f"mount overlay at {target}"
        elif source:
            what = f"mount {source} at {target}" + (f" ({fstype})" if fstype and not flags & MS_BIND else "")
        else:
            what = f"change mount flags of {target}"
        raise _error(what, err)


def _mount_one(m: Mount, target: str) -> None:
    flags, data = parse_options(m.options)
    if m.type == "overlay":
        _mount_overlay(m.source, target, flags, data)
        return
    fstype = m.type
    if fstype in ("bind", "rbind"):
        flags |= MS_BIND | (MS_REC if fstype == "rbind" else 0)
    datastr = ",".join(data)
    if len(datastr) >= PAGE_SIZE:
        raise InvalidArgument(
            f"mount options of {m.type} {m.source} are longer than a page ({len(datastr)} bytes)"
        )
    oflags = flags & ~_PROPAGATION
    if not flags & MS_REMOUNT or datastr:
        _sys_mount(m.source, target, fstype, oflags, datastr or None)
    if flags & _PROPAGATION:
        _sys_mount(None, target, None, flags & (_PROPAGATION | MS_REC | MS_SILENT), None)
    if oflags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:
        # A bind mount ignores MS_RDONLY: remount it to make it read-only.
        _sys_mount(None, target, None, oflags | MS_REMOUNT, None)


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount ``mounts`` at ``target`` in order (each at ``target/<mount.target>``).

    If one fails, the ones already mounted by this call are unmounted again and the error (a
    :class:`~pyctr.errdefs.PyctrError` carrying the kernel's message) is raised.
    """
    done: list[str] = []
    try:
        for m in mounts:
            dest = os.path.join(target, m.target.lstrip("/")) if m.target else target
            _mount_one(m, dest)
            done.append(dest)
    except BaseException:
        for dest in reversed(done):
            with contextlib.suppress(PyctrError):
                unmount(dest, lazy=True)
        raise


# -- overlay ---------------------------------------------------------------------------------------


def _split_lowerdirs(value: str) -> list[str]:
    """``a:b\\:c`` -> ``["a", "b:c"]`` (overlay escapes a colon in a path with a backslash)."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur.append(value[i + 1])
            i += 2
            continue
        if c == ":":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


#: Public name: split an overlay ``lowerdir=`` value into directories (a backslash escapes a colon).
split_lowerdirs = _split_lowerdirs


def _mount_overlay(source: str, target: str, flags: int, data: list[str]) -> None:
    datastr = ",".join(data)
    if len(datastr) < LONG_OPTIONS:
        try:
            _sys_mount(source or "overlay", target, "overlay", flags, datastr)
        except PyctrError as e:
            if getattr(e, "errno", 0) in (errno.EPERM, errno.EBUSY, errno.ENOSYS):
                raise
            # The classic call says only "Invalid argument"; the new API says which option and why.
            better = _overlay_diagnostics(source, flags, data, target)
            if better is not None:
                raise better from None
            raise
        return
    try:
        _mount_overlay_newapi(source, target, flags, data)
        return
    except NotImplementedErr:
        pass
    _mount_overlay_relative(source, target, flags, data)


def _overlay_diagnostics(source: str, flags: int, data: list[str], target: str) -> PyctrError | None:
    """Why the kernel refuses an overlay with these options, as the new mount API reports it."""
    try:
        fd = _fs_context(source, flags, data, target)
    except NotImplementedErr:
        return None
    except PyctrError as e:
        return e
    os.close(fd)
    return None


def _syscall(*args: Any) -> int:
    r = int(_lib().syscall(*args))
    if r < 0:
        raise OSError(ctypes.get_errno(), "")
    return r


def _fs_log(fd: int) -> str:
    """Messages the kernel left in a filesystem context (``e overlayfs: ...`` lines)."""
    msgs: list[str] = []
    for _ in range(16):
        try:
            b = os.read(fd, 1024)
        except OSError:
            break
        if not b:
            break
        msgs.append(b.decode(errors="replace").strip())
    return "; ".join(m[2:] if m[1:2] == " " else m for m in msgs)


def _fs_context(source: str, flags: int, data: list[str], target: str = "") -> int:
    """A created overlay superblock context (fsopen + fsconfig ... CMD_CREATE); returns its fd."""
    c = ctypes
    at = f" at {target}" if target else ""
    try:
        fd = _syscall(c.c_long(_SYS_FSOPEN), c.c_char_p(b"overlay"), c.c_uint(FSOPEN_CLOEXEC))
    except OSError as e:
        raise _error("fsopen overlay", e.errno or errno.ENOSYS) from None
    try:

        def conf(cmd: int, key: str | None, value: str | None, what: str) -> None:
            if value is not None and len(os.fsencode(value)) > _FSCONFIG_MAX_STRING:
                raise NotImplementedErr(f"overlay option {key} is too long for fsconfig")
            try:
                _syscall(c.c_long(_SYS_FSCONFIG), c.c_int(fd), c.c_uint(cmd), c.c_char_p(_b(key)),
                         c.c_char_p(_b(value)), c.c_int(0))
            except OSError as e:
                err = e.errno or errno.EINVAL
                log = _fs_log(fd)
                if err == errno.EINVAL and key == "lowerdir+" and ("nknown parameter" in log or not log):
                    raise NotImplementedErr("this kernel's overlay does not take lowerdir+") from None
                raise _error(f"mount overlay{at}: {what}", err, log) from None

        conf(FSCONFIG_SET_STRING, "source", source or "overlay", "source")
        if flags & MS_RDONLY:
            conf(FSCONFIG_SET_FLAG, "ro", None, "ro")
        for opt in ",".join(data).split(","):
            if not opt:
                continue
            key, sep, value = opt.partition("=")
            if key == "lowerdir" and sep:
                for d in _split_lowerdirs(value):
                    conf(FSCONFIG_SET_STRING, "lowerdir+", d, f"lower directory {d}")
            elif sep:
                conf(FSCONFIG_SET_STRING, key, value, opt)
            else:
                conf(FSCONFIG_SET_FLAG, key, None, opt)
        conf(FSCONFIG_CMD_CREATE, None, None, "create")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _mount_overlay_newapi(source: str, target: str, flags: int, data: list[str]) -> None:
    """Mount an overlay passing each lower directory on its own (``lowerdir+``, Linux >= 6.8)."""
    c = ctypes
    fd = _fs_context(source, flags, data, target)
    try:
        attrs = 0
        for bit, attr in ((MS_RDONLY, MOUNT_ATTR_RDONLY), (MS_NOSUID, MOUNT_ATTR_NOSUID),
                          (MS_NODEV, MOUNT_ATTR_NODEV), (MS_NOEXEC, MOUNT_ATTR_NOEXEC),
                          (MS_NOATIME, MOUNT_ATTR_NOATIME), (MS_STRICTATIME, MOUNT_ATTR_STRICTATIME),
                          (MS_NODIRATIME, MOUNT_ATTR_NODIRATIME)):
            if flags & bit:
                attrs |= attr
        try:
            mfd = _syscall(c.c_long(_SYS_FSMOUNT), c.c_int(fd), c.c_uint(FSMOUNT_CLOEXEC), c.c_uint(attrs))
        except OSError as e:
            raise _error(f"mount overlay at {target}", e.errno or errno.EINVAL, _fs_log(fd)) from None
    finally:
        os.close(fd)
    try:
        try:
            _syscall(c.c_long(_SYS_MOVE_MOUNT), c.c_int(mfd), c.c_char_p(b""), c.c_int(AT_FDCWD),
                     c.c_char_p(_b(target)), c.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
        except OSError as e:
            raise _error(f"mount overlay at {target}", e.errno or errno.EINVAL) from None
    finally:
        os.close(mfd)
    if flags & _PROPAGATION:
        _sys_mount(None, target, None, flags & (_PROPAGATION | MS_REC | MS_SILENT), None)


def compact_lowerdirs(data: Sequence[str]) -> tuple[str, list[str]]:
    """Rewrite the ``lowerdir=`` option of ``data`` relative to the lower directories' longest common
    directory; returns that directory and the new options (unchanged, with ``""``, if there is none)."""
    idx = next((i for i, o in enumerate(data) if o.startswith("lowerdir=")), -1)
    if idx < 0:
        return "", list(data)
    dirs = _split_lowerdirs(data[idx][len("lowerdir="):])
    if len(dirs) < 2 or not all(os.path.isabs(d) for d in dirs):
        return "", list(data)
    common = os.path.commonpath(dirs)
    if common == "/":
        return "", list(data)
    rel = [os.path.relpath(d, common) for d in dirs]
    out = list(data)
    out[idx] = "lowerdir=" + ":".join(r.replace(":", "\\:") for r in rel)
    return common, out


def _mount_overlay_relative(source: str, target: str, flags: int, data: list[str]) -> None:
    """containerd's way: relative lower directories, mounted from a thread with its own cwd."""
    common, rel = compact_lowerdirs(data)
    datastr = ",".join(rel)
    if not common or len(datastr) >= PAGE_SIZE:
        raise InvalidArgument(
            f"overlay mount options are {len(datastr)} bytes, more than the kernel takes ({PAGE_SIZE}); "
            "this kernel has no lowerdir+ to pass them one by one"
        )
    target = os.path.abspath(target)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            if _lib().unshare(CLONE_FS) != 0:
                raise _error("unshare(CLONE_FS)", ctypes.get_errno())
            os.chdir(common)  # this thread's working directory only, after unshare(CLONE_FS)
            _sys_mount(source or "overlay", target, "overlay", flags, datastr)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, name="pyctr-overlay-mount")
    t.start()
    t.join()
    if errors:
        raise errors[0]


# -- unmounting ------------------------------------------------------------------------------------


def overlay_index_known() -> bool:
    """Whether the kernel's overlayfs has the ``index`` feature (then mounts say ``index=off``)."""
    return os.path.exists("/sys/module/overlay/parameters/index")


def unmount(target: str, *, lazy: bool = False, retries: int = 50, all_layers: bool = False) -> None:
    """Unmount ``target``.  Not being mounted is not an error.

    A busy mount is retried ``retries`` times (every 50 ms); then, with ``lazy``, it is detached
    (``MNT_DETACH``), otherwise FailedPrecondition is raised.  With ``all_layers`` every mount stacked
    on ``target`` is taken down.
    """
    lib = _lib()
    bt = _b(target)
    attempt = 0
    while True:
        if lib.umount2(bt, 0) == 0:
            if all_layers:
                continue
            return
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return  # not (or no longer) a mount point
        if err == errno.EBUSY and attempt < retries:
            attempt += 1
            time.sleep(0.05)
            continue
        if err == errno.EBUSY and lazy:
            if lib.umount2(bt, MNT_DETACH) == 0:
                if all_layers:
                    continue
                return
            err = ctypes.get_errno()
        raise _error(f"unmount {target}", err)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, in the order they were mounted."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return [_unescape(line.split(" ", 5)[4]) for line in f if line.strip()]


def is_mountpoint(path: str) -> bool:
    path = os.path.realpath(path)
    return path in mount_points()


def unmount_all_under(path: str, *, lazy: bool = True) -> list[str]:
    """Unmount every mount at or below ``path`` (deepest and newest first); returns those taken down."""
    root = os.path.realpath(path)
    prefix = root.rstrip("/") + "/"
    todo = [m for m in mount_points() if m == root or m.startswith(prefix)]
    done: list[str] = []
    for mp in reversed(todo):
        unmount(mp, lazy=lazy, retries=10)
        done.append(mp)
    return done


# -- shell form ------------------------------------------------------------------------------------


def mount_command(mounts: Sequence[Mount], target: str) -> str:
    """The shell command (``mount(8)``) that mounts ``mounts`` at ``target``, one line per mount joined
    with ``&&``.  Long overlay lower directory lists are made relative (``(cd COMMON && mount ...)``)."""
    target = os.path.abspath(target)
    parts: list[str] = []
    for m in mounts:
        dest = os.path.join(target, m.target.lstrip("/")) if m.target else target
        opts = list(m.options)
        if m.type in ("bind", "rbind") or any(o in ("bind", "rbind") for o in opts):
            if m.type == "rbind" and "rbind" not in opts:
                opts.insert(0, "rbind")
            elif not any(o in ("bind", "rbind") for o in opts):
                opts.insert(0, "bind")
            q = shlex.quote
            parts.append(f"mount -o {q(','.join(opts))} {q(m.source)} {q(dest)}")
            continue
        cd = ""
        if m.type == "overlay" and len(",".join(opts)) >= LONG_OPTIONS:
            cd, opts = compact_lowerdirs(opts)
        cmd = f"mount -t {shlex.quote(m.type)}"
        if opts:
            cmd += f" -o {shlex.quote(','.join(opts))}"
        cmd += f" {shlex.quote(m.source or m.type)} {shlex.quote(dest)}"
        parts.append(f"(cd {shlex.quote(cd)} && {cmd})" if cd else cmd)
    return " && ".join(parts)


__all__ = [
    "compact_lowerdirs",
    "is_mountpoint",
    "mount_all",
    "mount_command",
    "mount_points",
    "parse_options",
    "split_lowerdirs",
    "unmount",
    "unmount_all_under",
]
