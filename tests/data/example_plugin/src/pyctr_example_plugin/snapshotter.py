"""A snapshotter that keeps every snapshot as a plain directory: a full copy of its parent.

Layout under the plugin's root::

    index.json          {"next": N, "snapshots": {key: {id, kind, parent, labels, created_at, updated_at}}}
    lock                flock(2)ed around every change, so several processes can share the root
    snapshots/<id>/     the snapshot's tree

Slow for big images and wasteful of disk, but it works on any filesystem and shows the whole
:class:`pyctr.snapshots.Snapshotter` contract in one page.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyctr import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyctr.filters import parse
from pyctr.snapshots import Info, Kind, Mount, Usage, apply_label_update


class DirSnapshotter:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)
        self._index = self.root / "index.json"

    # -- the index, under a file lock --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The index, locked; written back (atomically) if the block changed it."""
        with open(self.root / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data: dict[str, Any] = {"next": 1, "snapshots": {}}
            if self._index.exists():
                data = json.loads(self._index.read_text())
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self._index.with_suffix(".tmp")
                with open(tmp, "w") as f:
                    json.dump(data, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._index)

    def _dir(self, rec: Mapping[str, Any]) -> Path:
        return self.root / "snapshots" / str(rec["id"])

    @staticmethod
    def _get(data: dict[str, Any], key: str) -> dict[str, Any]:
        rec: dict[str, Any] | None = data["snapshots"].get(key)
        if rec is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return rec

    @staticmethod
    def _info(key: str, rec: Mapping[str, Any]) -> Info:
        return Info(kind=Kind.parse(rec["kind"]), name=key, parent=rec["parent"], labels=dict(rec["labels"]),
                    created_at=rec["created_at"], updated_at=rec["updated_at"])

    def _mounts(self, rec: Mapping[str, Any]) -> list[Mount]:
        mode = "ro" if rec["kind"] == Kind.VIEW.value else "rw"
        return [Mount(type="bind", source=str(self._dir(rec)), options=["rbind", mode])]

    # -- the Snapshotter protocol ------------------------------------------------------------------

    def stat(self, key: str) -> Info:
        with self._locked() as data:
            return self._info(key, self._get(data, key))

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        with self._locked() as data:
            rec = self._get(data, info.name)
            rec["labels"] = apply_label_update(rec["labels"], info.labels, fieldpaths)
            rec["updated_at"] = time.time_ns()
            return self._info(info.name, rec)

    def usage(self, key: str) -> Usage:
        with self._locked() as data:
            d = self._dir(self._get(data, key))
        size = inodes = 0
        for dirpath, dirnames, filenames in os.walk(d):
            for name in [*dirnames, *filenames]:
                inodes += 1
                with contextlib.suppress(OSError):
                    size += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
        return Usage(size=size, inodes=inodes)

    def mounts(self, key: str) -> list[Mount]:
        with self._locked() as data:
            rec = self._get(data, key)
            if rec["kind"] == Kind.COMMITTED.value:
                raise FailedPrecondition(f"snapshot {key!r} is committed: it has no mounts")
            return self._mounts(rec)

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> list[Mount]:
        if not key:
            raise InvalidArgument("a snapshot key must not be empty")
        with self._locked() as data:
            if key in data["snapshots"]:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            src = None
            if parent:
                prec = self._get(data, parent)
                if prec["kind"] != Kind.COMMITTED.value:
                    raise InvalidArgument(f"parent {parent!r} is not committed")
                src = self._dir(prec)
            now = time.time_ns()
            rec = {"id": data["next"], "kind": kind.value, "parent": parent, "labels": dict(labels or {}),
                   "created_at": now, "updated_at": now}
            d = self._dir(rec)
            d.mkdir()
            if src is not None:  # cp -a keeps owners, modes, times, xattrs, links and device nodes
                proc = subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(d)],
                                      capture_output=True, text=True)
                if proc.returncode:
                    shutil.rmtree(d, ignore_errors=True)
                    raise OSError(f"copying snapshot {parent!r} failed: {proc.stderr.strip()}")
            data["next"] += 1
            data["snapshots"][key] = rec
            return self._mounts(rec)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        with self._locked() as data:
            rec = self._get(data, key)
            if rec["kind"] != Kind.ACTIVE.value:
                raise FailedPrecondition(f"snapshot {key!r} is {rec['kind']}; only Active can be committed")
            if name in data["snapshots"]:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            del data["snapshots"][key]
            rec["kind"] = Kind.COMMITTED.value
            rec["updated_at"] = time.time_ns()
            if labels is not None:
                rec["labels"] = dict(labels)
            data["snapshots"][name] = rec

    def remove(self, key: str) -> None:
        with self._locked() as data:
            rec = self._get(data, key)
            children = [k for k, r in data["snapshots"].items() if r["parent"] == key]
            if children:
                raise FailedPrecondition(f"snapshot {key!r} has children ({', '.join(sorted(children))})")
            shutil.rmtree(self._dir(rec), ignore_errors=True)
            del data["snapshots"][key]

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        flt = parse(list(filters))
        with self._locked() as data:
            infos = [self._info(k, r) for k, r in data["snapshots"].items()]
        for info in infos:
            if flt.match_dict(info.filter_fields()):
                yield info

    def close(self) -> None:
        pass
