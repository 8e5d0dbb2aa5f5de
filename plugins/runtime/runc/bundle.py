"""Bundle directories: ``<state>/pyctr.runtime.runc/<ns>/<id>/`` (mode 0700).

Files: ``config.json`` (the OCI spec), ``rootfs/`` (the mounted snapshot), ``shim.json`` (where the
task's shim listens: written before the shim is asked to create, so a crash in between is found by
``load``), ``init.pid`` and ``exit`` (written by the shim), ``log.json`` (runc's log),
``events.jsonl`` (every event the shim published), ``status.json`` (the final state of a task whose
shim died, kept until the task is deleted).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyctr.errdefs import PyctrError


def write_json(path: Path, data: Any, sync: bool = False) -> None:
    # A name per writer: two processes settling the same task must not share (and steal) a temp file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


class Bundle:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def create(self, spec: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.path.mkdir(mode=0o700)
        write_json(self.path / "config.json", spec)

    def mount_rootfs(self, mounts: Sequence[Mapping[str, Any]]) -> None:
        if not mounts:
            return
        from pyctr.mount import mount_all
        from pyctr.snapshots import Mount

        self.rootfs.mkdir(mode=0o711, exist_ok=True)
        mount_all([Mount.from_dict(m) for m in mounts], str(self.rootfs))

    def unmount_rootfs(self) -> None:
        if not self.rootfs.exists():
            return
        from pyctr.mount import unmount_all_under

        unmount_all_under(str(self.rootfs), lazy=True)

    def remove(self) -> None:
        """Unmount the rootfs and delete the directory (never following a mount into the image)."""
        self.unmount_rootfs()
        with contextlib.suppress(FileNotFoundError):
            if self.rootfs.is_dir() and not os.path.ismount(self.rootfs):
                with contextlib.suppress(OSError):
                    self.rootfs.rmdir()  # an empty mount point; never rm -rf an image's files
            if self.rootfs.exists():
                raise PyctrError(f"rootfs {self.rootfs} is still mounted or not empty; left in place")
            shutil.rmtree(self.path)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # the namespace directory, when it was the last task

    def read(self, name: str) -> Any:
        return read_json(self.path / name)

    def write(self, name: str, data: Any, sync: bool = False) -> None:
        write_json(self.path / name, data, sync=sync)
