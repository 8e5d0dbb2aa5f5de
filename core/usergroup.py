"""Users and groups of a container image: ``/etc/passwd`` and ``/etc/group`` read safely from a rootfs.

``resolve_user(spec, root)`` turns an image's or the user's ``User`` (``name``, ``uid``,
``name:group``, ``uid:gid``, ...) into a uid, a gid and the supplementary gids, as containerd's
``oci.WithUser`` + ``WithAdditionalGIDs`` do: names are looked up in the rootfs, the primary gid comes
first in the supplementary list, followed by every group that names the user as a member.  Ids above
``MaxInt32`` are refused (CVE-2024-40635).

The rootfs is never trusted: a path is resolved one component at a time inside the root, symlinks
(absolute or with ``..``) are interpreted as if the root were ``/`` (filepath-securejoin's rule), so an
image's ``/etc/passwd -> /etc/shadow-of-the-host`` reads the image's own file, never the host's.
:class:`LayeredRoot` does the same over the layer directories of an overlay mount (upper first), with
overlayfs's whiteouts and opaque directories, so no mount is needed to look a user up.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errdefs import InvalidArgument, NotFound

MAX_ID = 2**31 - 1
_MAX_SYMLINKS = 255
_MAX_FILE = 4 << 20


class RootReader:
    """A read-only view of a container root file system."""

    def lstat(self, parts: Sequence[str]) -> tuple[str, os.stat_result] | None:
        """``lstat`` of the path made of ``parts`` (no symlink followed); its host path and stat, or
        ``None`` when it does not exist."""
        raise NotImplementedError

    def resolve(self, path: str) -> tuple[str, os.stat_result] | None:
        """Follow ``path`` inside the root, symlinks included; ``None`` if it does not exist."""
        parts: list[str] = []
        pending = [p for p in path.split("/") if p]
        links = 0
        while pending:
            comp = pending.pop(0)
            if comp == ".":
                continue
            if comp == "..":
                if parts:
                    parts.pop()
                continue
            found = self.lstat([*parts, comp])
            if found is None:
                return None
            host, st = found
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise InvalidArgument(f"too many symbolic links resolving {path!r} in the rootfs")
                target = os.readlink(host)
                if target.startswith("/"):
                    parts = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            if pending and not stat.S_ISDIR(st.st_mode):
                return None
            parts.append(comp)
        return self.lstat(parts)

    def read_file(self, path: str) -> bytes | None:
        """The content of the regular file at ``path`` in the root, or ``None`` if there is none."""
        got = self.resolve(path)
        if got is None:
            return None
        host, st = got
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, _MAX_FILE)
        finally:
            os.close(fd)


class DirRoot(RootReader):
    """A rootfs that is a plain directory (a mounted snapshot, a native snapshot, a bundle's rootfs)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def lstat(self, parts: Sequence[str]) -> tuple[str, os.stat_result] | None:
        host = os.path.join(self.path, *parts)
        try:
            return host, os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(host: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(host, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


class LayeredRoot(RootReader):
    """The union of overlay layer directories, topmost first, read the way overlayfs merges them."""

    def __init__(self, layers: Sequence[str]) -> None:
        self.layers = [os.fspath(x) for x in layers]

    def lstat(self, parts: Sequence[str]) -> tuple[str, os.stat_result] | None:
        visible = list(self.layers)
        result: tuple[str, os.stat_result] | None = None
        for i in range(len(parts) + 1):
            prefix = parts[:i]
            result = None
            below: list[str] = []
            for layer in visible:
                host = os.path.join(layer, *prefix)
                try:
                    st = os.lstat(host)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if _is_whiteout(st):
                    break
                if result is None:
                    result = (host, st)
                    if not stat.S_ISDIR(st.st_mode):
                        break
                    below.append(layer)
                    if i and _is_opaque(host):
                        break
                elif stat.S_ISDIR(st.st_mode):
                    below.append(layer)
                    if _is_opaque(host):
                        break
                else:
                    break
            if result is None:
                return None
            visible = below
        return result


def root_for_mounts(mounts: Sequence[object]) -> RootReader | None:
    """A reader for the rootfs that ``mounts`` (snapshot mounts) would assemble, without mounting:
    a bind mount's source, or an overlay's ``upperdir`` over its ``lowerdir`` list.  ``None`` for
    other mount types (mount them read-only and use :class:`DirRoot`)."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    mtype = str(getattr(m, "type", "") if not isinstance(m, dict) else m.get("type", ""))
    source = str(getattr(m, "source", "") if not isinstance(m, dict) else m.get("source", ""))
    options = list(getattr(m, "options", []) if not isinstance(m, dict) else m.get("options", []))
    if mtype == "bind" or "bind" in options or "rbind" in options:
        return DirRoot(source)
    if mtype == "overlay":
        upper = ""
        lower: list[str] = []
        for opt in options:
            if opt.startswith("upperdir="):
                upper = opt[len("upperdir="):]
            elif opt.startswith("lowerdir="):
                lower = opt[len("lowerdir="):].split(":")
        layers = ([upper] if upper else []) + [x for x in lower if x]
        return LayeredRoot(layers) if layers else None
    return None


# -- /etc/passwd and /etc/group ------------------------------------------------------------------

@dataclass
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str = "/"
    shell: str = ""


@dataclass
class GroupEntry:
    name: str
    gid: int
    members: list[str] = field(default_factory=list)


def _int(s: str) -> int | None:
    s = s.strip()
    if not s.isdigit():
        return None
    return int(s)


def parse_passwd(data: bytes | str) -> list[PasswdEntry]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    out: list[PasswdEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split(":")
        if len(f) < 4:
            continue
        uid, gid = _int(f[2]), _int(f[3])
        if uid is None or gid is None:
            continue
        out.append(PasswdEntry(f[0], uid, gid, f[5] if len(f) > 5 else "/", f[6] if len(f) > 6 else ""))
    return out


def parse_group(data: bytes | str) -> list[GroupEntry]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    out: list[GroupEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split(":")
        if len(f) < 3:
            continue
        gid = _int(f[2])
        if gid is None:
            continue
        members = [m.strip() for m in f[3].split(",") if m.strip()] if len(f) > 3 else []
        out.append(GroupEntry(f[0], gid, members))
    return out


@dataclass
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: list[int]
    username: str = ""
    home: str = "/"

    def to_dict(self) -> dict[str, object]:
        return {"uid": self.uid, "gid": self.gid, "additionalGids": list(self.additional_gids)}


def _check_id(kind: str, v: int, spec: str) -> int:
    if v < 0 or v > MAX_ID:
        raise InvalidArgument(f"{kind} {v} in user {spec!r} is out of range (0..{MAX_ID})")
    return v


def _parse_num(s: str) -> int | None:
    if s.isdigit():
        return int(s)
    if s.startswith("-") and s[1:].isdigit():
        return int(s)
    return None


def needs_lookup(spec: str) -> bool:
    """Whether resolving ``spec`` has to read the rootfs (always true but for an empty spec: a numeric
    uid's primary gid and supplementary groups come from the image's files)."""
    return bool(spec)


def resolve_user(spec: str, root: RootReader | str | os.PathLike[str] | None,
                 extra_gids: Sequence[int] = ()) -> ResolvedUser:
    """Resolve a ``User`` string against the rootfs (see the module docstring)."""
    reader = root if root is None or isinstance(root, RootReader) else DirRoot(root)
    spec = spec.strip()
    users: list[PasswdEntry] | None = None
    groups: list[GroupEntry] | None = None

    def load_users() -> list[PasswdEntry]:
        nonlocal users
        if users is None:
            data = reader.read_file("/etc/passwd") if reader is not None else None
            users = parse_passwd(data) if data is not None else []
        return users

    def load_groups() -> list[GroupEntry]:
        nonlocal groups
        if groups is None:
            data = reader.read_file("/etc/group") if reader is not None else None
            groups = parse_group(data) if data is not None else []
        return groups

    user_part, sep, group_part = spec.partition(":")
    if sep and not group_part:
        raise InvalidArgument(f"invalid user {spec!r}: a group must follow ':'")
    entry: PasswdEntry | None = None
    if not user_part:
        if sep:
            raise InvalidArgument(f"invalid user {spec!r}: a user must come before ':'")
        uid, gid = 0, 0
        entry = next((u for u in load_users() if u.uid == 0), None)
        if entry is not None:
            gid = entry.gid
    else:
        num = _parse_num(user_part)
        if num is not None:
            uid = _check_id("uid", num, spec)
            entry = next((u for u in load_users() if u.uid == uid), None)
            gid = entry.gid if entry is not None else 0
        else:
            if reader is None:
                raise InvalidArgument(f"cannot resolve user {user_part!r}: the image has no rootfs to read")
            entry = next((u for u in load_users() if u.name == user_part), None)
            if entry is None:
                raise NotFound(f"unable to find user {user_part}: no matching entries in /etc/passwd")
            uid = _check_id("uid", entry.uid, spec)
            gid = entry.gid
    if group_part:
        gnum = _parse_num(group_part)
        if gnum is not None:
            gid = gnum
        else:
            if reader is None:
                raise InvalidArgument(f"cannot resolve group {group_part!r}: the image has no rootfs to read")
            g = next((g for g in load_groups() if g.name == group_part), None)
            if g is None:
                raise NotFound(f"unable to find group {group_part}: no matching entries in /etc/group")
            gid = g.gid
    gid = _check_id("gid", gid, spec)
    username = entry.name if entry is not None else ""
    additional: list[int] = [gid]
    if username and not group_part:
        for g in load_groups():
            if username in g.members and g.gid not in additional:
                additional.append(_check_id("gid", g.gid, spec))
    for x in extra_gids:
        if _check_id("gid", x, spec) not in additional:
            additional.append(x)
    return ResolvedUser(uid, gid, additional, username, entry.home if entry is not None else "/")
