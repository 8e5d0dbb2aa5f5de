"""The native snapshotter, as containerd's ``native``: each snapshot is a full copy of its parent.

Layout under the plugin root: ``metadata.db`` and ``snapshots/<id>``.  Prepare and view copy the
parent's tree (owners, modes, extended attributes, hard links, devices, times); mounts are one bind
mount of the snapshot's directory, ``rw,rbind`` for active snapshots and ``ro,rbind`` for views.
Works on any filesystem; costs a copy per snapshot.
"""

from __future__ import annotations

import os

from pyctr.snapshots import Kind, Mount

from ..fsutil import copy_tree
from ..storage import BaseSnapshotter, Snapshot


class NativeSnapshotter(BaseSnapshotter):
    """Copy-based snapshots.

    :param root: the plugin's directory.
    :param sync_remove: delete a removed snapshot's directory at once (otherwise at :meth:`cleanup`).
    """

    def _populate(self, tmp: str, kind: Kind, parent_ids: tuple[int, ...]) -> None:
        os.chmod(tmp, 0o755)
        if parent_ids:
            copy_tree(self.snapshot_dir(parent_ids[0]), tmp)

    def _mounts(self, s: Snapshot) -> list[Mount]:
        ro = "ro" if s.kind == Kind.VIEW else "rw"
        return [Mount("bind", self.snapshot_dir(s.id), [ro, "rbind"])]
