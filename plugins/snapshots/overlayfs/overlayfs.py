"""The overlayfs snapshotter, as containerd's ``overlayfs``.

Layout under the plugin root: ``metadata.db`` and ``snapshots/<id>/{fs,work}``.  ``fs`` is the
snapshot's own files (the upper directory of an active snapshot, a lower directory once committed);
``work`` is overlay's work directory (active snapshots only).  Mounts, as containerd returns them:

=========================  =====================================================================
snapshot                    mounts
=========================  =====================================================================
no parent, active           ``bind <id>/fs`` with ``rw,rbind``
no parent, view             ``bind <id>/fs`` with ``ro,rbind``
parents, active             ``overlay`` with ``workdir=<id>/work,upperdir=<id>/fs,lowerdir=<p1>/fs:...``
one parent, view            ``bind <parent>/fs`` with ``ro,rbind``
two or more parents, view   ``overlay`` with ``lowerdir=<p1>/fs:<p2>/fs...`` only
=========================  =====================================================================

Lower directories are listed nearest parent first.  ``index=off`` leads the options when the kernel
knows the ``index`` parameter, then the configured ``mount_options`` follow the directories.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence

from pyctr.errdefs import PyctrError
from pyctr.snapshots import Kind, Mount

from ..storage import BaseSnapshotter, Snapshot

LABEL_UPPERDIR = "containerd.io/snapshot/overlay.upperdir"


def check_overlay_support(root: str) -> str:
    """Try an overlay mount (two lowers, an upper) in ``root``; return ``""`` if it works, else why not."""
    from pyctr import mount

    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        d = tempfile.mkdtemp(prefix="probe-", dir=root)
    except OSError as e:
        return f"cannot use {root} for overlay snapshots: {e.strerror}"
    try:
        for sub in ("l1", "l2", "u", "w", "m"):
            os.mkdir(os.path.join(d, sub))
        opts = [f"lowerdir={d}/l2:{d}/l1", f"upperdir={d}/u", f"workdir={d}/w"]
        try:
            mount.mount_all([Mount("overlay", "overlay", opts)], os.path.join(d, "m"))
        except PyctrError as e:
            return f"overlay mounts do not work in {root}: {e}"
        mount.unmount(os.path.join(d, "m"), lazy=True)
        return ""
    finally:
        with contextlib.suppress(OSError):
            from ..fsutil import remove_tree

            remove_tree(d)


class OverlaySnapshotter(BaseSnapshotter):
    """Snapshots as overlay layers.

    :param root: the plugin's directory.
    :param mount_options: extra overlay options appended to every overlay mount.
    :param sync_remove: delete a removed snapshot's directories at once (otherwise at :meth:`cleanup`).
    :param upperdir_label: label each snapshot with its upper directory
        (``containerd.io/snapshot/overlay.upperdir``).
    :param index_off: add ``index=off`` (default: when the kernel has the ``index`` parameter).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        mount_options: Sequence[str] = (),
        sync_remove: bool = True,
        upperdir_label: bool = False,
        index_off: bool | None = None,
    ) -> None:
        super().__init__(root, sync_remove=sync_remove)
        self.mount_options = list(mount_options)
        self.upperdir_label = upperdir_label
        if index_off is None:
            from pyctr.mount import overlay_index_known

            index_off = overlay_index_known()
        self.index_off = index_off

    def upper_path(self, sid: int) -> str:
        return os.path.join(self.snapshot_dir(sid), "fs")

    def work_path(self, sid: int) -> str:
        return os.path.join(self.snapshot_dir(sid), "work")

    def _usage_dir(self, sid: int) -> str:
        return self.upper_path(sid)

    def _extra_labels(self, sid: int) -> dict[str, str]:
        return {LABEL_UPPERDIR: self.upper_path(sid)} if self.upperdir_label else {}

    def _populate(self, tmp: str, kind: Kind, parent_ids: tuple[int, ...]) -> None:
        os.chmod(tmp, 0o700)
        fs = os.path.join(tmp, "fs")
        os.mkdir(fs, 0o755)
        os.chmod(fs, 0o755)
        if kind == Kind.ACTIVE:
            os.mkdir(os.path.join(tmp, "work"), 0o711)
        if parent_ids:
            # The new layer's root takes its parent's owner, as containerd does.
            st = os.stat(self.upper_path(parent_ids[0]))
            os.lchown(fs, st.st_uid, st.st_gid)

    def _mounts(self, s: Snapshot) -> list[Mount]:
        if not s.parent_ids:
            ro = "ro" if s.kind == Kind.VIEW else "rw"
            return [Mount("bind", self.upper_path(s.id), [ro, "rbind"])]
        options: list[str] = []
        if self.index_off:
            options.append("index=off")
        if s.kind == Kind.ACTIVE:
            options += [f"workdir={self.work_path(s.id)}", f"upperdir={self.upper_path(s.id)}"]
        elif len(s.parent_ids) == 1:
            return [Mount("bind", self.upper_path(s.parent_ids[0]), ["ro", "rbind"])]
        options.append("lowerdir=" + ":".join(self.upper_path(p) for p in s.parent_ids))
        options += self.mount_options
        return [Mount("overlay", "overlay", options)]
